/* MPI-IO workload for the uprobe tests: MPI_File_open, N MPI_File_write_at of COUNT
 * elements of TYPE (byte or int) at consecutive offsets, N MPI_File_read_at back, close.
 * Usage: uprobe_mpiio FILE N COUNT byte|int   (prints "ok BYTES" when the data match) */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
	MPI_Init(&argc, &argv);
	if (argc != 5) {
		fprintf(stderr, "usage: %s FILE N COUNT byte|int\n", argv[0]);
		MPI_Abort(MPI_COMM_WORLD, 2);
	}
	const char *path = argv[1];
	int n = atoi(argv[2]), count = atoi(argv[3]);
	int is_int = strcmp(argv[4], "int") == 0;
	MPI_Datatype type = is_int ? MPI_INT : MPI_BYTE;
	int size = is_int ? (int)sizeof(int) : 1;
	long chunk = (long)count * size;
	char *out = malloc(chunk), *in = malloc(chunk);
	MPI_File fh;
	MPI_Status st;

	if (n <= 0 || count <= 0 || !out || !in)
		MPI_Abort(MPI_COMM_WORLD, 2);
	if (MPI_File_open(MPI_COMM_WORLD, path, MPI_MODE_CREATE | MPI_MODE_RDWR, MPI_INFO_NULL,
			  &fh) != MPI_SUCCESS)
		MPI_Abort(MPI_COMM_WORLD, 1);
	for (int i = 0; i < n; i++) {
		memset(out, 'a' + i % 26, chunk);
		if (MPI_File_write_at(fh, (MPI_Offset)i * chunk, out, count, type, &st) != MPI_SUCCESS)
			MPI_Abort(MPI_COMM_WORLD, 1);
	}
	for (int i = 0; i < n; i++) {
		memset(out, 'a' + i % 26, chunk);
		if (MPI_File_read_at(fh, (MPI_Offset)i * chunk, in, count, type, &st) != MPI_SUCCESS ||
		    memcmp(in, out, chunk) != 0)
			MPI_Abort(MPI_COMM_WORLD, 1);
	}
	MPI_File_close(&fh);
	MPI_Finalize();
	printf("ok %ld\n", n * chunk);
	return 0;
}
