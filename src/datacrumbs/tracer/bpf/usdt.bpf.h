/* USDT probes: one uprobe per note site, included at the end of datacrumbs.bpf.c.
 * The site's cookie keys usdt_specs (struct dc_usdt_spec); see datacrumbs.h for
 * what the event carries. The semaphore (if any) is the kernel's: the uprobe was
 * attached with its ref_ctr_offset, so the program's PROVIDER_NAME_ENABLED() is true
 * while attached. */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DC_USDT_SITES);
	__uint(map_flags, BPF_F_NO_PREALLOC);	/* memory only for the sites attached */
	__type(key, __u32);
	__type(value, struct dc_usdt_spec);
} usdt_specs SEC(".maps");

/* One argument as its spec says; 0 read, -1 not (not decoded, or unreadable). */
static __always_inline int usdt_arg(struct pt_regs *ctx, struct dc_usdt_arg *a, __u64 *out)
{
	__u64 v = 0, addr;
	__u32 shift;

	switch (a->kind) {
	case DC_USDT_CONST:
		v = a->val;
		break;
	case DC_USDT_REG:
		if (bpf_probe_read_kernel(&v, sizeof(v), (void *)ctx + (a->reg & 0xff)) < 0)
			return -1;
		break;
	case DC_USDT_MEM:
		if (bpf_probe_read_kernel(&addr, sizeof(addr), (void *)ctx + (a->reg & 0xff)) < 0)
			return -1;
		addr += a->val;
		switch (a->size) {
		case 1:
			if (bpf_probe_read_user(&v, 1, (void *)addr) < 0)
				return -1;
			break;
		case 2:
			if (bpf_probe_read_user(&v, 2, (void *)addr) < 0)
				return -1;
			break;
		case 4:
			if (bpf_probe_read_user(&v, 4, (void *)addr) < 0)
				return -1;
			break;
		default:
			if (bpf_probe_read_user(&v, 8, (void *)addr) < 0)
				return -1;
		}
		break;
	default:
		return -1;
	}
	/* keep the low size bytes, sign-extended when the spec says signed */
	shift = 64 - 8 * (a->size & 15);
	if (shift > 0 && shift < 64) {
		v <<= shift;
		v = a->is_signed ? (__u64)((__s64)v >> shift) : v >> shift;
	}
	*out = v;
	return 0;
}

/* Send argument i's text (a string the pointer v points to): 1 sent, 0 not a
 * string here (unreadable or empty), -1 lost (ring full). A global subprogram:
 * inlined in dc_usdt's loop over the arguments, its sends and their outcomes
 * multiplied the verifier's states (most of dc_usdt's 39,000 instructions). */
__noinline int dc_usdt_str(__u64 v, __u32 i, __u32 tid, __u64 ts, __u32 probe)
{
	__u32 zero = 0;
	struct dc_path *p;
	long n;

	if (!v)
		return 0;
	p = bpf_map_lookup_elem(&path_scratch, &zero);
	if (!p)
		return 0;
	n = bpf_probe_read_user_str(p->path, DC_USDT_STR_MAX, (void *)v);
	if (n <= 1)
		return 0;
	p->pseudo = 0;
	return send_name(n & (DC_USDT_STR_MAX * 2 - 1), 0, DC_NAME_USDT_STR, 0,
			 ((__u64)tid << 32) | i, ts, probe);
}

SEC("uprobe")
int dc_usdt(struct pt_regs *ctx)
{
	__u32 site = (__u32)bpf_get_attach_cookie(ctx);
	__u64 tid_tgid = bpf_get_current_pid_tgid();
	struct dc_config *c = get_config();
	struct dc_usdt_spec *us;
	struct dc_spec *sp;
	struct dc_event ev = {};
	struct dc_task *t;
	__u64 v[DC_USDT_ARGS] = {};
	__u32 tgid = tid_tgid >> 32, probe, mask = 0;
	int r, sent = 0, lost = 0;
	bool in;

	if (!c)
		return 0;
	t = task_state(c, &in);
	if (!in)
		return 0;
	us = bpf_map_lookup_elem(&usdt_specs, &site);
	if (!us)
		return 0;
	probe = us->probe;
	sp = bpf_map_lookup_elem(&probe_specs, &probe);
	if (!sp || !sp->active)
		return 0;
	ev.ts = bpf_ktime_get_ns();
	remember_comm(t, tgid);
	if (c->mode == DC_MODE_PROFILE) {
		profile_add(c, t, tgid, probe, 0, -1);
		return 0;
	}
	for (int i = 0; i < DC_USDT_ARGS; i++) {
		if (i < us->nargs && usdt_arg(ctx, &us->args[i], &v[i]) == 0)
			mask |= 1u << i;
	}
	if (c->capture_paths) {
		for (int i = 0; i < DC_USDT_ARGS; i++) {
			if (!(mask & (1u << i)) || !us->args[i].str)
				continue;
			r = dc_usdt_str(v[i], i, (__u32)tid_tgid, ev.ts, probe);
			if (r > 0)
				sent = 1;
			else if (r < 0)
				lost = 1;
		}
	}
	ev.pid = tgid;
	ev.tid = (__u32)tid_tgid;
	ev.probe = (probe & DC_EV_PROBE_MASK) | (sent ? DC_EV_PATH_SENT : 0);
	ev.fd = -1;
	ev.fd2 = -1;
	ev.ret = (__s64)v[0];
	ev.count = v[1];
	ev.offset = (__s64)v[2];
	ev.handle = v[3];
	ev.bytes = -1;
	ev.flags = mask | ((us->nargs & 0xff) << 8);
	if (lost) {
		ev.probe |= DC_EV_NAMES_LOST;
		count_lost(1);
	}
	if (send_event(c, &ev) < 0) {
		count_lost(0);
		unsent_add(c, t, tgid, probe, 0, -1);
		if (lost)
			uncount_lost(1);
	}
	return 0;
}
