/* MPI-IO workload for the file and byte tests: two files open at once, each rank writing
 * its own region of each, with predefined datatypes of several sizes and one derived one.
 * Usage: mpiio_files FILE_A FILE_B N   (run under mpiexec; rank 0 prints
 * "ok A_BYTES B_BYTES" with the bytes all ranks wrote to each file; every rank prints
 * "rank R pid P" on stderr, the MPI library's own word on which process is which rank, and
 * stays 0.3 s more, as ranks of real jobs live: the tracer reads a rank when it first
 * writes a process's events, every 50 ms or so)
 *
 * Per rank and file A: N MPI_File_write_at of BYTE_COUNT MPI_BYTE, N of DOUBLE_COUNT
 * MPI_DOUBLE, one of DERIVED_COUNT elements of contiguous(4, MPI_INT) (16 bytes each), then
 * one MPI_File_read_at of its region as MPI_BYTE. File B: N MPI_File_write_at of INT_COUNT
 * MPI_INT, interleaved with A's writes, then one collective MPI_File_read_at_all. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BYTE_COUNT 1000
#define DOUBLE_COUNT 125
#define DERIVED_COUNT 10
#define INT_COUNT 256

int main(int argc, char **argv)
{
	int rank, nranks;

	MPI_Init(&argc, &argv);
	MPI_Comm_rank(MPI_COMM_WORLD, &rank);
	MPI_Comm_size(MPI_COMM_WORLD, &nranks);
	if (argc != 4 || atoi(argv[3]) <= 0) {
		fprintf(stderr, "usage: %s FILE_A FILE_B N\n", argv[0]);
		MPI_Abort(MPI_COMM_WORLD, 2);
	}
	fprintf(stderr, "rank %d pid %d\n", rank, (int)getpid());
	int n = atoi(argv[3]);
	long a_rank = (long)n * (BYTE_COUNT + DOUBLE_COUNT * 8) + DERIVED_COUNT * 16;
	long b_rank = (long)n * INT_COUNT * 4;
	char *bytes = malloc(BYTE_COUNT), *back = malloc(a_rank);
	double *doubles = malloc(DOUBLE_COUNT * sizeof(double));
	int *ints = malloc(DERIVED_COUNT * 4 * sizeof(int)), *bints = malloc(b_rank);
	MPI_Datatype quad;
	MPI_File a, b;
	MPI_Status st;
	MPI_Offset at = (MPI_Offset)rank * a_rank, bt = (MPI_Offset)rank * b_rank;

	if (!bytes || !back || !doubles || !ints || !bints)
		MPI_Abort(MPI_COMM_WORLD, 1);
	memset(bytes, 'a' + rank, BYTE_COUNT);
	for (int i = 0; i < DOUBLE_COUNT; i++)
		doubles[i] = rank + i * 0.5;
	for (int i = 0; i < DERIVED_COUNT * 4; i++)
		ints[i] = rank * 1000 + i;
	MPI_Type_contiguous(4, MPI_INT, &quad);
	MPI_Type_commit(&quad);
	if (MPI_File_open(MPI_COMM_WORLD, argv[1], MPI_MODE_CREATE | MPI_MODE_RDWR, MPI_INFO_NULL,
			  &a) != MPI_SUCCESS ||
	    MPI_File_open(MPI_COMM_WORLD, argv[2], MPI_MODE_CREATE | MPI_MODE_RDWR, MPI_INFO_NULL,
			  &b) != MPI_SUCCESS)
		MPI_Abort(MPI_COMM_WORLD, 1);
	for (int i = 0; i < n; i++) {
		if (MPI_File_write_at(a, at, bytes, BYTE_COUNT, MPI_BYTE, &st) != MPI_SUCCESS)
			MPI_Abort(MPI_COMM_WORLD, 1);
		at += BYTE_COUNT;
		for (int k = 0; k < INT_COUNT; k++)
			bints[(long)i * INT_COUNT + k] = rank * 100000 + i * INT_COUNT + k;
		if (MPI_File_write_at(b, bt + (MPI_Offset)i * INT_COUNT * 4, bints + (long)i * INT_COUNT,
				      INT_COUNT, MPI_INT, &st) != MPI_SUCCESS)
			MPI_Abort(MPI_COMM_WORLD, 1);
		if (MPI_File_write_at(a, at, doubles, DOUBLE_COUNT, MPI_DOUBLE, &st) != MPI_SUCCESS)
			MPI_Abort(MPI_COMM_WORLD, 1);
		at += DOUBLE_COUNT * 8;
	}
	if (MPI_File_write_at(a, at, ints, DERIVED_COUNT, quad, &st) != MPI_SUCCESS)
		MPI_Abort(MPI_COMM_WORLD, 1);
	MPI_Barrier(MPI_COMM_WORLD);
	at = (MPI_Offset)rank * a_rank;
	if (MPI_File_read_at(a, at, back, (int)a_rank, MPI_BYTE, &st) != MPI_SUCCESS ||
	    memcmp(back, bytes, BYTE_COUNT) != 0 ||
	    memcmp(back + a_rank - DERIVED_COUNT * 16, ints, DERIVED_COUNT * 16) != 0)
		MPI_Abort(MPI_COMM_WORLD, 1);
	memset(bints, 0, b_rank);
	if (MPI_File_read_at_all(b, bt, bints, n * INT_COUNT, MPI_INT, &st) != MPI_SUCCESS ||
	    bints[n * INT_COUNT - 1] != rank * 100000 + n * INT_COUNT - 1)
		MPI_Abort(MPI_COMM_WORLD, 1);
	MPI_File_close(&b);
	MPI_File_close(&a);
	MPI_Type_free(&quad);
	if (rank == 0)
		printf("ok %ld %ld\n", a_rank * nranks, b_rank * nranks);
	MPI_Finalize();
	usleep(300000);
	return 0;
}
