"""The per-(process, file, class, layer) state of analysis.Detail as arrays, one row a group.

A chunk of 131,072 events holds some 10,000 (pid, file, class, layer) groups; folding
each into a dict of Python objects (a table row, a :class:`~.analysis.Stream` and its
``absorb``) cost more CPU than all the chunk's numpy work. Here a group is a row of one
int64 matrix, found by a sorted array of its composite key, and a chunk's (or a later
partial's) groups are folded in with a handful of numpy operations whatever their
number. The fold is ``Stream.absorb`` written for many streams at once; the dict state
(:meth:`items`) is rebuilt once, for the summary.
"""

from __future__ import annotations

from itertools import chain

import numpy as np

# columns of the state matrix
COUNT, BYTES, NS, ASKED = 0, 1, 2, 3           # the table row
CONSEC, SEQ, RAND, MIS, LARGE = 4, 5, 6, 7, 8  # the stream's additive counts
POS, POS_ABS = 9, 10                           # the stream's position (relative or absolute)
HAS = 11                                       # an access seen: head and last end are set
HEAD, HEAD_ABS, LAST, LAST_ABS = 12, 13, 14, 15
IN_TABLE, IS_STREAM = 16, 17
NCOL = 18
STREAM_COLS = slice(CONSEC, LAST_ABS + 1)    # not IN_TABLE: a table fold sets it
_FILE_BITS, _CL_BITS = 31, 5                   # composite key: proc | file | class*6+layer


class Groups:
    """Rows of (source, pid, file key, class, layer) groups (see the module docstring)."""

    def __init__(self, sizes_cap: int):
        self.sizes = Sizes(sizes_cap)       # key: file id * 30 + layer * 5 + class
        self.procs: dict = {}               # (source, pid) -> proc id
        self.proc_list: list = []
        self.files: dict = {None: 0}        # file key -> file id (0: no file)
        self.file_list: list = [None]
        self.sorted_keys = np.zeros(0, np.int64)
        self.sorted_ids = np.zeros(0, np.int64)
        self.comp = np.zeros(0, np.int64)   # composite key of each row
        self.state = np.zeros((0, NCOL), np.int64)
        self.n = 0
        self.ext: dict = {}                 # row -> [(start, end)] read extents, relative
        # row -> [(offset, is_abs, previous end, is_abs)]: pairs on different bases
        # (analysis.Stream.pend), classed once a fold puts both on one
        self.pend: dict = {}

    def __len__(self) -> int:
        return self.n

    def __getstate__(self) -> dict:
        """The rows in use only (the matrix grows by doubling): a worker's partial goes to
        the parent through a pipe, half as large."""
        state = dict(self.__dict__)
        state["state"] = self.state[:self.n]
        return state

    # -- ids ------------------------------------------------------------------------

    def proc_ids(self, source: str, pids) -> np.ndarray:
        return _intern(self.procs, self.proc_list, ((source, p) for p in pids))

    def file_ids(self, fkeys) -> np.ndarray:
        return _intern(self.files, self.file_list, fkeys)

    @staticmethod
    def key(proc: np.ndarray, file: np.ndarray, cls: np.ndarray, layer: np.ndarray) -> np.ndarray:
        return (((proc << _FILE_BITS) | file) << _CL_BITS) | (cls * 6 + layer)

    def rows(self, comp: np.ndarray) -> np.ndarray:
        """The rows of distinct composite keys ``comp``, new ones added (zeroed)."""
        sk = self.sorted_keys
        pos = np.searchsorted(sk, comp)
        found = pos < len(sk)
        found[found] = sk[pos[found]] == comp[found]
        ids = np.empty(len(comp), np.int64)
        ids[found] = self.sorted_ids[pos[found]]
        new = ~found
        k = int(new.sum())
        if k:
            nk = comp[new]
            nid = np.arange(self.n, self.n + k, dtype=np.int64)
            ids[new] = nid
            if self.n + k > len(self.state):
                grow = np.zeros((max(self.n + k, 2 * len(self.state), 1024), NCOL), np.int64)
                grow[:self.n] = self.state[:self.n]
                self.state = grow
            self.comp = np.concatenate([self.comp, nk])
            # merged into the sorted keys in O(rows) (a trace touching a new file every
            # few events adds many keys every chunk: no re-sort of them all)
            o = np.argsort(nk)
            at = np.searchsorted(sk, nk[o])
            self.sorted_keys = np.insert(sk, at, nk[o])
            self.sorted_ids = np.insert(self.sorted_ids, at, nid[o])
            self.n += k
        return ids

    # -- folding --------------------------------------------------------------------

    def add_table(self, ids: np.ndarray, vals: np.ndarray) -> None:
        """Add (count, bytes, ns, asked) rows to distinct rows ``ids``."""
        s = self.state
        s[ids, COUNT:ASKED + 1] += vals
        s[ids, IN_TABLE] = 1

    def add_streams(self, ids: np.ndarray, b: np.ndarray, ext_j: np.ndarray,
                    ext_se: np.ndarray, ext_file: np.ndarray, pend_j=None, pend_v=None) -> dict:
        """Compose stream states ``b`` (rows of the state matrix's layout, of a later partial)
        after those of distinct rows ``ids``: ``Stream.absorb`` for every row at once.
        ``ext_j`` indexes ``b`` for each of ``ext_se``'s relative read extents [start, end),
        ``pend_j`` for each of ``pend_v``'s pairs (offset, is_abs, previous end, is_abs);
        returns {file id: [start, end) array} of the extents that became absolute."""
        from .analysis import _folder

        folder = _folder()
        if folder is not None and len(ids):
            got = folder.add_streams(self.state, ids, b, ext_j, ext_se,
                                     np.zeros(0, np.int64) if pend_j is None else pend_j,
                                     np.zeros((0, 4), np.int64) if pend_v is None else pend_v)
            if got is not None:
                return self._side_tables(ids, ext_j, ext_file, pend_j, *got)
        s = self.state
        old = s[ids, IS_STREAM] == 1
        fresh = ids[~old]
        if len(fresh):
            s[fresh, STREAM_COLS] = b[~old, STREAM_COLS]
            s[fresh, IS_STREAM] = 1
        placed: dict = {}
        every = bool(old.all())             # the steady state: every stream seen before
        oi = ids if every else ids[old]
        if len(ext_j):
            jo = old[ext_j]
            for j, (st, en) in zip(ext_j[~jo].tolist(), ext_se[~jo].tolist()):
                self.ext.setdefault(int(ids[j]), []).append((st, en))
        has_pend = pend_j is not None and len(pend_j)
        if has_pend:
            po = old[pend_j]
            for j, v in zip(pend_j[~po].tolist(), pend_v[~po].tolist()):
                self.pend.setdefault(int(ids[j]), []).append(tuple(v))
        if not len(oi):
            return placed
        bo = b if every else b[old]
        a = np.take(s, oi, axis=0)              # the table's columns ride along unchanged
        shift, sabs = a[:, POS].copy(), a[:, POS_ABS].copy()
        if has_pend and po.any():               # b's relative positions on this base
            j2 = (np.cumsum(old) - 1)[pend_j[po]]
            v = pend_v[po]
            off = np.where(v[:, 1] == 1, v[:, 0], v[:, 0] + shift[j2])
            oab = np.where(v[:, 1] == 1, 1, sabs[j2])
            prv = np.where(v[:, 3] == 1, v[:, 2], v[:, 2] + shift[j2])
            pab = np.where(v[:, 3] == 1, 1, sabs[j2])
            same = oab == pab
            d = off - prv
            for col, hit in ((CONSEC, d == 0), (SEQ, d > 0), (RAND, d < 0)):
                np.add.at(a[:, col], j2[same & hit], 1)
            for j, row in zip(j2[~same].tolist(), np.stack([off, oab, prv, pab], axis=1)[~same].tolist()):
                self.pend.setdefault(int(oi[j]), []).append(tuple(row))
        if len(ext_j):
            loc = np.cumsum(old) - 1            # b row -> row of bo
            jo = old[ext_j]
            j2 = loc[ext_j[jo]]
            moved = ext_se[jo] + shift[j2][:, None]
            isabs = sabs[j2] == 1
            if isabs.any():
                placed.update(_by_file(ext_file[ext_j[jo]][isabs], moved[isabs]))
            if (~isabs).any():
                self._add_relative(oi[j2[~isabs]], moved[~isabs])
        a[:, CONSEC:LARGE + 1] += bo[:, CONSEC:LARGE + 1]
        bh = bo[:, HAS] == 1
        hb_abs = bo[:, HEAD_ABS] == 1
        h_off = np.where(hb_abs, bo[:, HEAD], bo[:, HEAD] + shift)
        h_abs = np.where(hb_abs, 1, sabs)
        ahas = a[:, HAS] == 1
        sh = bh & ~ahas
        a[sh, HEAD] = h_off[sh]
        a[sh, HEAD_ABS] = h_abs[sh]
        cl = bh & ahas
        mixed = cl & (h_abs != a[:, LAST_ABS])  # b's head and this one's last end
        for j in np.flatnonzero(mixed).tolist():
            self.pend.setdefault(int(oi[j]), []).append(
                (int(h_off[j]), int(h_abs[j]), int(a[j, LAST]), int(a[j, LAST_ABS])))
        cl &= ~mixed
        d = h_off - a[:, LAST]
        a[:, CONSEC] += cl & (d == 0)
        a[:, SEQ] += cl & (d > 0)
        a[:, RAND] += cl & (d < 0)
        lb_abs = bo[:, LAST_ABS] == 1
        a[bh, LAST] = np.where(lb_abs, bo[:, LAST], bo[:, LAST] + shift)[bh]
        a[bh, LAST_ABS] = np.where(lb_abs, 1, sabs)[bh]
        a[bh, HAS] = 1
        pb = bo[:, POS_ABS] == 1
        a[:, POS] = np.where(pb, bo[:, POS], shift + bo[:, POS])
        a[:, POS_ABS] = np.where(pb, 1, sabs)
        s[oi] = a
        return placed

    def _side_tables(self, ids, ext_j, ext_file, pend_j, ext_kind, ext_out, pend_kind,
                     pend_out, mixed_j, mixed_v) -> dict:
        """add_streams' extents and pairs after fold.c composed the rows, filed as the numpy
        code files them (same lists, same order); returns the extents made absolute."""
        placed: dict = {}
        if len(ext_j):
            new = ext_kind == 0
            for j, se in zip(ext_j[new].tolist(), ext_out[new].tolist()):
                self.ext.setdefault(int(ids[j]), []).append(tuple(se))
        if pend_j is not None and len(pend_j):
            for kind in (0, 2):         # new rows' pairs, then those still on two bases
                sel = pend_kind == kind
                for j, v in zip(pend_j[sel].tolist(), pend_out[sel].tolist()):
                    self.pend.setdefault(int(ids[j]), []).append(tuple(v))
        if len(ext_j):
            isabs = ext_kind == 1
            if isabs.any():
                placed.update(_by_file(ext_file[ext_j[isabs]], ext_out[isabs]))
            rel_sel = ext_kind == 2
            if rel_sel.any():
                self._add_relative(ids[ext_j[rel_sel]], ext_out[rel_sel])
        for j, v in zip(mixed_j.tolist(), mixed_v.tolist()):
            self.pend.setdefault(int(ids[j]), []).append(tuple(v))
        return placed

    def _add_relative(self, rows: np.ndarray, se: np.ndarray) -> None:
        """Read extents ``se`` [start, end) still relative to state rows ``rows`` (whose
        position is not absolute yet), merged into each row's."""
        from .analysis import _merge_runs

        rel: dict = {}
        for r, (st, en) in zip(rows.tolist(), se.tolist()):
            rel.setdefault(r, []).append((st, en))
        for r, add in rel.items():
            self.ext[r] = _merge_runs(self.ext.get(r, []) + add)

    def merge(self, o: "Groups") -> tuple[np.ndarray, dict]:
        """Fold ``o``, the groups of a later partial, into these; returns the file ids of
        ``o`` in this one (index: o's file id) and the extents that became absolute."""
        fmap = self.file_ids(o.file_list)
        self.sizes.merge(o.sizes, lambda k: fmap[k // 30] * 30 + k % 30)
        if not o.n:
            return fmap, {}
        pmap = _intern(self.procs, self.proc_list, o.proc_list)
        comp = o.comp
        cl = comp & ((1 << _CL_BITS) - 1)
        f = (comp >> _CL_BITS) & ((1 << _FILE_BITS) - 1)
        p = comp >> (_CL_BITS + _FILE_BITS)
        ids = self.rows(((((pmap[p]) << _FILE_BITS) | fmap[f]) << _CL_BITS) | cl)
        ob = o.state[:o.n]
        t = ob[:, IN_TABLE] == 1
        self.add_table(ids[t], ob[t, COUNT:ASKED + 1])
        st = ob[:, IS_STREAM] == 1
        sidx = np.flatnonzero(st)
        loc = np.full(o.n, -1, np.int64)
        loc[sidx] = np.arange(len(sidx))
        ej, ese = _by_row(o.ext, loc, 2)
        pj, pv = _by_row(o.pend, loc, 4)
        placed = self.add_streams(ids[sidx], ob[sidx], ej, ese, fmap[f[sidx]], pj, pv)
        return fmap, placed

    # -- the dict state -------------------------------------------------------------

    def items(self):
        """(key, table row or None, stream tuple or None, relative extents, pairs on
        different bases) per row, key
        (source, pid, file key, class, layer); stream tuple: (consec, seq, rand,
        misaligned, large, pos, pos_abs, head or None, last_end or None, last_abs)."""
        s = self.state[:self.n].tolist()
        comp = self.comp.tolist()
        plist, flist = self.proc_list, self.file_list
        fmask, cmask = (1 << _FILE_BITS) - 1, (1 << _CL_BITS) - 1
        for r, (row, k) in enumerate(zip(s, comp)):
            cl = k & cmask
            src, pid = plist[k >> (_CL_BITS + _FILE_BITS)]
            key = (src, pid, flist[(k >> _CL_BITS) & fmask], cl // 6, cl % 6)
            tab = row[COUNT:ASKED + 1] if row[IN_TABLE] else None
            st = None
            if row[IS_STREAM]:
                has = row[HAS]
                st = (row[CONSEC], row[SEQ], row[RAND], row[MIS], row[LARGE], row[POS],
                      bool(row[POS_ABS]), (row[HEAD], bool(row[HEAD_ABS])) if has else None,
                      row[LAST] if has else None, bool(row[LAST_ABS]))
            yield key, tab, st, self.ext.get(r, []), self.pend.get(r, [])


def _by_file(f: np.ndarray, rows: np.ndarray) -> dict:
    """{file id: its rows of ``rows``, in their order}, ``f`` each row's file id."""
    o = np.argsort(f, kind="stable")
    f, rows = f[o], rows[o]
    cut = np.flatnonzero(np.diff(f)) + 1
    return dict(zip(f[np.append(0, cut)].tolist(), np.split(rows, cut)))


def _by_row(lists: dict, loc: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A {row: [tuple of ``width`` ints]} side table as (``loc[row]`` of each tuple, the
    tuples as an n x ``width`` array): a partial's read extents or pending pairs, in the
    dict's order (no Python step per tuple: a partial holds thousands)."""
    if not lists:
        return np.zeros(0, np.int64), np.zeros((0, width), np.int64)
    keys = np.fromiter(lists.keys(), np.int64, len(lists))
    rows = np.repeat(loc[keys], [len(v) for v in lists.values()])
    vals = np.array(list(chain.from_iterable(lists.values())), np.int64).reshape(-1, width)
    return rows.astype(np.int64), vals


def _intern(index: dict, items: list, keys) -> np.ndarray:
    """The ids of ``keys`` in ``index`` (key -> position in ``items``), new keys appended."""
    out = []
    for k in keys:
        i = index.get(k)
        if i is None:
            i = index[k] = len(items)
            items.append(k)
        out.append(i)
    return np.array(out, np.int64)


class Sizes:
    """Access sizes per (file, layer, class) key as arrays: the distinct sizes of a key and
    how often each occurred, the first ``cap`` distinct sizes a key met kept, as the dict
    of dicts it replaces admits them (a chunk's sizes in ascending order, a merged
    partial's in the order it admitted them); found by a sorted array of (key, size id)."""

    _SID_BITS = 27

    def __init__(self, cap: int):
        self.cap = cap
        self.size_ids: dict = {}            # size -> id
        self.pk = np.zeros(0, np.int64)     # per pair: key << _SID_BITS | size id
        self.size = np.zeros(0, np.int64)
        self.count = np.zeros(0, np.int64)
        self.order = np.zeros(0, np.int64)  # admission order
        self.sorted_pk = np.zeros(0, np.int64)
        self.sorted_idx = np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.pk)

    def add(self, key: np.ndarray, size: np.ndarray, count: np.ndarray) -> None:
        """Distinct (key, size) pairs with their counts, in the order a dict would see them."""
        if not len(key):
            return
        us, sinv = np.unique(size, return_inverse=True)
        sinv = sinv.ravel()
        ids = self.size_ids
        # only admitted sizes get an id, so the ids stay as bounded as the pairs (a trace of
        # ever new sizes does not grow them); a size without one is in no pair yet
        sid = np.array([ids.get(s, -1) for s in us.tolist()], np.int64)[sinv]
        pk = (key << self._SID_BITS) | sid
        spk = self.sorted_pk
        pos = np.searchsorted(spk, pk)
        found = (pos < len(spk)) & (sid >= 0)
        found[found] = spk[pos[found]] == pk[found]
        self.count[self.sorted_idx[pos[found]]] += count[found]
        new = np.flatnonzero(~found)
        if not len(new):
            return
        nk = key[new]
        o = np.argsort(nk, kind="stable")       # cumcount of each new pair within its key
        ks = nk[o]
        start = np.ones(len(ks), bool)
        start[1:] = ks[1:] != ks[:-1]
        idx = np.arange(len(ks))
        cum = np.empty(len(ks), np.int64)
        cum[o] = idx - np.maximum.accumulate(np.where(start, idx, 0))
        have = (np.searchsorted(spk, (nk + 1) << self._SID_BITS)
                - np.searchsorted(spk, nk << self._SID_BITS))
        take = new[have + cum < self.cap]
        if not len(take):
            return
        base = int(self.order.max()) + 1 if len(self.order) else 0
        at = len(self.pk)
        for s_ in np.unique(size[take]).tolist():
            ids.setdefault(s_, len(ids))
        if len(ids) > 1 << self._SID_BITS:
            raise OverflowError("more distinct access sizes than a size id holds")
        pk[take] = (key[take] << self._SID_BITS) | np.array(
            [ids[s_] for s_ in size[take].tolist()], np.int64)
        self.pk = np.concatenate([self.pk, pk[take]])
        self.size = np.concatenate([self.size, size[take]])
        self.count = np.concatenate([self.count, count[take]])
        self.order = np.concatenate([self.order, base + np.arange(len(take))])
        nk = pk[take]
        o = np.argsort(nk)
        pos = np.searchsorted(spk, nk[o])
        self.sorted_pk = np.insert(spk, pos, nk[o])
        self.sorted_idx = np.insert(self.sorted_idx, pos, (at + np.arange(len(take)))[o])

    def keys_in_order(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(key, size, count) of every pair, by key then admission order."""
        o = np.lexsort((self.order, self.pk >> self._SID_BITS))
        return (self.pk >> self._SID_BITS)[o], self.size[o], self.count[o]

    def merge(self, o: "Sizes", key_map) -> None:
        """Add ``o``'s pairs, a later partial's (``key_map``: its keys in this one's)."""
        k, s, c = o.keys_in_order()
        self.add(key_map(k), s, c)
