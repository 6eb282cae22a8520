/* HDF5 workload for the uprobe tests: one file, one contiguous int32 dataset of N
 * elements, written with one H5Dwrite, closed, reopened and read back with one H5Dread.
 * Usage: uprobe_hdf5 FILE N   (prints "ok BYTES" when the data read back matches) */
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: %s FILE N\n", argv[0]);
		return 2;
	}
	const char *path = argv[1];
	long n = atol(argv[2]);
	if (n <= 0)
		return 2;
	int *buf = malloc(n * sizeof(int));
	if (!buf)
		return 1;
	for (long i = 0; i < n; i++)
		buf[i] = (int)i;

	hsize_t dims[1] = {(hsize_t)n};
	hid_t file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
	hid_t space = H5Screate_simple(1, dims, NULL);
	hid_t dset = H5Dcreate2(file, "data", H5T_STD_I32LE, space, H5P_DEFAULT, H5P_DEFAULT,
				H5P_DEFAULT);
	if (file < 0 || space < 0 || dset < 0 ||
	    H5Dwrite(dset, H5T_NATIVE_INT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0)
		return 1;
	H5Dclose(dset);
	H5Sclose(space);
	H5Fclose(file);

	for (long i = 0; i < n; i++)
		buf[i] = -1;
	file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
	dset = file < 0 ? -1 : H5Dopen2(file, "data", H5P_DEFAULT);
	if (dset < 0 || H5Dread(dset, H5T_NATIVE_INT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0)
		return 1;
	H5Dclose(dset);
	H5Fclose(file);
	for (long i = 0; i < n; i++)
		if (buf[i] != (int)i)
			return 1;
	free(buf);
	printf("ok %ld\n", n * (long)sizeof(int));
	return 0;
}
