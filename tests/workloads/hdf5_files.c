/* HDF5 workload for the file and dataset tests: two files open at once, datasets created
 * at the file and in a group, an attribute, then read back by full path and through a group.
 * Usage: hdf5_files FILE_A FILE_B N   (prints "ok" when everything read back matches)
 *
 * A: /top (N int32, created at the file), /grid/temperature (N doubles, created in the
 *    group), attribute "units" on /grid/temperature.  B: /b (N int32).
 * Then A is reopened: /grid/temperature is opened by its full path and read, the group
 * "grid" is opened and /grid/temperature read again through it; /top is read. */
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>

static hid_t make(hid_t loc, const char *name, hid_t type, hsize_t n)
{
	hid_t space = H5Screate_simple(1, &n, NULL);
	hid_t d = H5Dcreate2(loc, name, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);

	H5Sclose(space);
	return d;
}

int main(int argc, char **argv)
{
	if (argc != 4 || atol(argv[3]) <= 0) {
		fprintf(stderr, "usage: %s FILE_A FILE_B N\n", argv[0]);
		return 2;
	}
	hsize_t n = (hsize_t)atol(argv[3]);
	int *ints = malloc(n * sizeof(int));
	double *dbl = malloc(n * sizeof(double)), *dback = malloc(n * sizeof(double));
	if (!ints || !dbl || !dback)
		return 1;
	for (hsize_t i = 0; i < n; i++) {
		ints[i] = (int)i;
		dbl[i] = i * 0.25;
	}

	hid_t a = H5Fcreate(argv[1], H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
	hid_t b = H5Fcreate(argv[2], H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
	hid_t top = make(a, "top", H5T_STD_I32LE, n);
	hid_t grid = H5Gcreate2(a, "grid", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
	hid_t temp = make(grid, "temperature", H5T_IEEE_F64LE, n);
	hid_t bd = make(b, "b", H5T_STD_I32LE, n);
	hid_t scalar = H5Screate(H5S_SCALAR);
	hid_t units = H5Acreate2(temp, "units", H5T_NATIVE_INT, scalar, H5P_DEFAULT, H5P_DEFAULT);
	int kelvin = 1;

	if (a < 0 || b < 0 || top < 0 || grid < 0 || temp < 0 || bd < 0 || units < 0 ||
	    H5Dwrite(top, H5T_NATIVE_INT, H5S_ALL, H5S_ALL, H5P_DEFAULT, ints) < 0 ||
	    H5Dwrite(bd, H5T_NATIVE_INT, H5S_ALL, H5S_ALL, H5P_DEFAULT, ints) < 0 ||
	    H5Dwrite(temp, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, dbl) < 0 ||
	    H5Awrite(units, H5T_NATIVE_INT, &kelvin) < 0)
		return 1;
	H5Aclose(units);
	H5Sclose(scalar);
	H5Dclose(bd);
	H5Dclose(temp);
	H5Gclose(grid);
	H5Dclose(top);
	H5Fclose(b);
	H5Fclose(a);

	a = H5Fopen(argv[1], H5F_ACC_RDONLY, H5P_DEFAULT);
	temp = a < 0 ? -1 : H5Dopen2(a, "/grid/temperature", H5P_DEFAULT);
	if (temp < 0 || H5Dread(temp, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, dback) < 0)
		return 1;
	H5Dclose(temp);
	grid = H5Gopen2(a, "grid", H5P_DEFAULT);
	temp = grid < 0 ? -1 : H5Dopen2(grid, "temperature", H5P_DEFAULT);
	top = H5Dopen2(a, "top", H5P_DEFAULT);
	if (temp < 0 || top < 0 ||
	    H5Dread(temp, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, dback) < 0 ||
	    H5Dread(top, H5T_NATIVE_INT, H5S_ALL, H5S_ALL, H5P_DEFAULT, ints) < 0)
		return 1;
	H5Dclose(top);
	H5Dclose(temp);
	H5Gclose(grid);
	H5Fclose(a);
	for (hsize_t i = 0; i < n; i++)
		if (dback[i] != i * 0.25 || ints[i] != (int)i)
			return 1;
	printf("ok\n");
	return 0;
}
