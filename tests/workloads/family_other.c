/* A library whose name matches the test family but that exports none of its functions
 * (as h5py's libhdf5_hl matches libhdf5*.so*): the tracer must skip it, not warn. */
int dcfam_unrelated(int x) { return x + 1; }
