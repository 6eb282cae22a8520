"""h5py workload for the HDF5 naming tests, run by Debian's /usr/bin/python3 with
python3-h5py (built on Debian's libhdf5; h5py's PyPI wheel bundles a copy of its own).
Usage: python3 h5py_files.py FILE N   (prints the HDF5 library file it mapped, then "ok")

/grid/temperature (N doubles) is made in a group with create_dataset (H5Dcreate2);
/top (N int32) by assignment, which h5py makes anonymously (H5Dcreate_anon) and links.
Both are read back through h5py's object lookup (H5Oopen): by path and through the group.
"""

import re
import sys

import h5py
import numpy as np

path, n = sys.argv[1], int(sys.argv[2])
with h5py.File(path, "w") as f:
    f.create_group("grid").create_dataset("temperature", data=np.arange(n, dtype="f8") / 4)
    f["top"] = np.arange(n, dtype="i4")
with h5py.File(path, "r") as f:
    temp = f["grid/temperature"][...]
    again = f["grid"]["temperature"][...]
    top = f["top"][...]
maps = open("/proc/self/maps").read()
print(sorted(set(re.findall(r"/\S*/libhdf5[^/\s]*\.so[.0-9]*", maps))))
assert (temp == again).all() and temp[-1] == (n - 1) / 4 and top[-1] == n - 1
print("ok")
