/* Prints "NAME HANDLE SIZE" for MPICH's predefined datatypes and for two derived ones,
 * with the size MPI_Type_size gives: what the daemon's decoding of handles is checked on.
 * Usage: mpi_datatypes   (no mpiexec needed: a singleton MPI process) */
#include <mpi.h>
#include <stdio.h>

#define T(t) { #t, t }

int main(int argc, char **argv)
{
	struct { const char *name; MPI_Datatype type; } types[] = {
		T(MPI_CHAR), T(MPI_SIGNED_CHAR), T(MPI_UNSIGNED_CHAR), T(MPI_BYTE), T(MPI_WCHAR),
		T(MPI_SHORT), T(MPI_UNSIGNED_SHORT), T(MPI_INT), T(MPI_UNSIGNED), T(MPI_LONG),
		T(MPI_UNSIGNED_LONG), T(MPI_FLOAT), T(MPI_DOUBLE), T(MPI_LONG_DOUBLE),
		T(MPI_LONG_LONG_INT), T(MPI_UNSIGNED_LONG_LONG), T(MPI_PACKED), T(MPI_INT8_T),
		T(MPI_INT16_T), T(MPI_INT32_T), T(MPI_INT64_T), T(MPI_UINT8_T), T(MPI_UINT16_T),
		T(MPI_UINT32_T), T(MPI_UINT64_T), T(MPI_C_BOOL), T(MPI_C_FLOAT_COMPLEX),
		T(MPI_C_DOUBLE_COMPLEX), T(MPI_C_LONG_DOUBLE_COMPLEX), T(MPI_AINT), T(MPI_OFFSET),
		T(MPI_COUNT), T(MPI_CHARACTER), T(MPI_INTEGER), T(MPI_REAL), T(MPI_DOUBLE_PRECISION),
		T(MPI_COMPLEX), T(MPI_DOUBLE_COMPLEX), T(MPI_LOGICAL), T(MPI_2INT),
		T(MPI_FLOAT_INT), T(MPI_DOUBLE_INT), T(MPI_LONG_INT), T(MPI_SHORT_INT),
		T(MPI_LONG_DOUBLE_INT),
	};
	MPI_Datatype quad, vec;
	int size;

	MPI_Init(&argc, &argv);
	for (unsigned i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
		if (types[i].type == MPI_DATATYPE_NULL)
			continue;	/* not available in this build */
		MPI_Type_size(types[i].type, &size);
		printf("%s %u %d\n", types[i].name, (unsigned)types[i].type, size);
	}
	MPI_Type_contiguous(4, MPI_INT, &quad);
	MPI_Type_commit(&quad);
	MPI_Type_vector(3, 2, 4, MPI_DOUBLE, &vec);
	MPI_Type_commit(&vec);
	MPI_Type_size(quad, &size);
	printf("derived_contiguous %u %d\n", (unsigned)quad, size);
	MPI_Type_size(vec, &size);
	printf("derived_vector %u %d\n", (unsigned)vec, size);
	MPI_Finalize();
	return 0;
}
