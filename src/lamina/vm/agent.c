/*
 * lamina guest agent: PID 1 of a lamina micro-VM.
 *
 * Built by the host with `gcc -static -Os` (lamina/vm/_agent.py) and placed in the
 * generated initramfs as /init. The guest has no other userland, so this program does
 * all of early userspace itself, in order:
 *
 *   1. mount /dev (devtmpfs), /proc, /sys;
 *   2. load the kernel modules listed in /lib/modules/load.list (virtio transport, block,
 *      console, filesystems), in dependency order, with finit_module(2);
 *   3. open the virtio-serial port named "lamina.agent" (the control channel);
 *   4. with lamina.net=nat, load /lib/modules/net.list and configure eth0 for QEMU's
 *      user-mode network (10.0.2.15/24, gateway 10.0.2.2, DNS 10.0.2.3);
 *   5. when the kernel command line says lamina.root=DEV, mount DEV read-only
 *      (lamina.rootfstype=erofs|ext4), a tmpfs-backed overlay on top of it at /newroot,
 *      /proc, /sys, /dev, /dev/pts, /dev/shm inside it, and write its /etc/hostname,
 *      /etc/hosts and (with a network) /etc/resolv.conf, as Docker does;
 *   6. send HELLO (with boot timestamps) and serve the protocol of docs/VM_AGENT.md:
 *      exec processes (chrooted into /newroot), carry their stdin, stdout and stderr
 *      (or their pseudo-terminal, with its window size), forward signals, report exit
 *      status; reap every orphan as init must.
 *
 * A VM on bridge networks gets its NICs' addresses, MTUs, default routes and the
 * container's /etc/hostname, /etc/hosts and /etc/resolv.conf in a NETWORK frame, the
 * host's first, before any EXEC (docs/VM_AGENT.md).
 *
 * A VM restored from a snapshot (lamina/vm/_snapshot.py) wakes up in step 6 with the
 * template's clock, hostname and random state: the host's CONFIGURE sets them afresh,
 * and the agent answers with a new HELLO, the host's sign that it is alive again.
 *
 * Frames are big-endian: u8 type, u8 flags, u16 reserved, u32 session, u32 length, then
 * `length` payload bytes. A failure during boot is printed on the console and sent as
 * an ERROR frame for session 0 when the channel is up; the VM is then powered off.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/openat2.h>
#include <linux/random.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define PROTO_VERSION 1
#define MAX_PAYLOAD (1u << 20)
#define MAX_SESSIONS 64
#define HDR 12
#define MAX_NETWORKS 8 /* NICs: VmConfig's rule */

enum {
	/* host -> guest */
	T_PING = 0x01, T_EXEC = 0x02, T_STDIN = 0x03, T_SIGNAL = 0x04, T_SHUTDOWN = 0x05,
	T_CONFIGURE = 0x06, T_RESIZE = 0x07, T_NETWORK = 0x08,
	/* guest -> host */
	T_HELLO = 0x81, T_PONG = 0x82, T_STARTED = 0x83, T_STDOUT = 0x84, T_STDERR = 0x85,
	T_EXIT = 0x86, T_ERROR = 0x87,
};
/* EXEC flags. EXEC_HOST: run in the agent's own root (the initramfs, where the host's
 * tools such as /bin/busybox live) instead of chrooted into the container: the host
 * uses it for cp, diff, commit and top. Only the host can send EXEC. */
enum { EXEC_STDIN = 1, EXEC_HOST = 2, EXEC_TOOL = 4, EXEC_TTY = 8 };
/* EXEC_TOOL: chrooted into the container like a workload, but argv runs the agent root's
 * /bin/busybox (opened before the chroot, started with fexecve): the host's file tools
 * (tar for cp) see the container's view, symlinks included, and the image needs no tar. */
/* EXEC_TTY: the process gets a pseudo-terminal of the container's own devpts instance
 * (/newroot/dev/pts) as stdin, stdout and stderr, and as its controlling terminal. The
 * master is the session's stdout (one stream: a terminal merges stdout and stderr), STDIN
 * frames are written to it, RESIZE sets its window size. */

struct session {
	uint32_t id;
	pid_t pid;
	int out, err, in; /* our ends of the child's pipes, -1 when closed */
	char *inbuf;      /* stdin bytes not yet written to the child */
	size_t inlen;
	int in_eof;       /* close stdin once inbuf is drained */
	int pty;          /* EXEC_TTY: the terminal's master (for RESIZE), else -1 */
};

static struct session sessions[MAX_SESSIONS];
static int port = -1;
static int have_root;
extern char **environ;

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_BOOTTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The TSC: under TCG it counts host ticks since the VM started, which lets the host
 * split a cold start into VMM start-up and guest time. arm64 has no TSC: its virtual
 * counter (at the generic timer's rate, not the host's TSC rate) is sent instead, and
 * the host does not split an arm64 boot with it. */
static uint64_t rdtsc(void)
{
#if defined(__x86_64__) || defined(__i386__)
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return (uint64_t)hi << 32 | lo;
#elif defined(__aarch64__)
	uint64_t v;
	__asm__ volatile("mrs %0, cntvct_el0" : "=r"(v));
	return v;
#else
	return 0;
#endif
}

static void put32(unsigned char *p, uint32_t v)
{
	p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}

static uint32_t get32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put64(unsigned char *p, uint64_t v)
{
	put32(p, v >> 32);
	put32(p + 4, (uint32_t)v);
}

static void writeall(int fd, struct iovec *iov, int n)
{
	while (n > 0) {
		ssize_t w = writev(fd, iov, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			/* The host went away: nothing left to serve. */
			reboot(RB_AUTOBOOT);
			_exit(1);
		}
		while (n > 0 && (size_t)w >= iov->iov_len) {
			w -= iov->iov_len;
			iov++, n--;
		}
		if (n > 0) {
			iov->iov_base = (char *)iov->iov_base + w;
			iov->iov_len -= w;
		}
	}
}

static void send_frame(int type, uint32_t session, const void *data, size_t len)
{
	unsigned char h[HDR] = {0};
	struct iovec iov[2] = {{h, HDR}, {(void *)data, len}};
	h[0] = type;
	put32(h + 4, session);
	put32(h + 8, len);
	if (port >= 0)
		writeall(port, iov, len ? 2 : 1);
}

static void say(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("lamina-agent: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

/* A boot step failed: tell the console and the host, then power off. */
static void fatal(const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	say("%s", msg);
	send_frame(T_ERROR, 0, msg, strlen(msg));
	sync();
	reboot(RB_AUTOBOOT);
	_exit(1);
}

static void mkdir_p(char *path, mode_t mode)
{
	for (char *p = path + 1; *p; p++) {
		if (*p == '/') {
			*p = 0;
			mkdir(path, mode);
			*p = '/';
		}
	}
	mkdir(path, mode);
}

static void mnt(const char *src, const char *dst, const char *type, unsigned long fl,
		const char *opts)
{
	mkdir(dst, 0755);
	if (mount(src, dst, type, fl, opts) < 0)
		fatal("mount %s on %s: %s", type, dst, strerror(errno));
}

static char cmdline[4096];

/* The value of `key=` on the kernel command line (a copy), or NULL. */
static const char *param(const char *key)
{
	static char val[256];
	size_t kl = strlen(key);
	for (char *p = cmdline; *p;) {
		while (*p == ' ' || *p == '\n')
			p++;
		char *end = p + strcspn(p, " \n");
		if ((size_t)(end - p) > kl && !strncmp(p, key, kl) && p[kl] == '=') {
			size_t n = end - p - kl - 1;
			if (n >= sizeof val)
				n = sizeof val - 1;
			memcpy(val, p + kl + 1, n);
			val[n] = 0;
			return strdup(val);
		}
		p = end;
	}
	return NULL;
}

static void load_modules(const char *list)
{
	FILE *f = fopen(list, "r");
	char line[512];
	if (!f)
		return;
	while (fgets(line, sizeof line, f)) {
		line[strcspn(line, "\n")] = 0;
		if (!*line)
			continue;
		int fd = open(line, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			fatal("open module %s: %s", line, strerror(errno));
		if (syscall(SYS_finit_module, fd, "", 0) < 0 && errno != EEXIST)
			fatal("load module %s: %s", line, strerror(errno));
		close(fd);
	}
	fclose(f);
}

/* Virtio devices appear asynchronously after their driver loads: poll briefly. */
static int wait_for(int (*found)(char *, size_t), char *out, size_t n, const char *what)
{
	for (int i = 0; i < 5000; i++) {
		if (found(out, n))
			return 0;
		usleep(1000);
	}
	fatal("%s did not appear", what);
	return -1;
}

static int find_port(char *out, size_t n)
{
	DIR *d = opendir("/sys/class/virtio-ports");
	struct dirent *e;
	int ok = 0;
	if (!d)
		return 0;
	while (!ok && (e = readdir(d))) {
		char p[300], name[64] = {0};
		if (e->d_name[0] == '.')
			continue;
		snprintf(p, sizeof p, "/sys/class/virtio-ports/%s/name", e->d_name);
		int fd = open(p, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		ssize_t r = read(fd, name, sizeof name - 1);
		close(fd);
		if (r > 0 && !strncmp(name, "lamina.agent", 12) && (name[12] == '\n' || !name[12])) {
			snprintf(out, n, "/dev/%s", e->d_name);
			ok = access(out, F_OK) == 0;
		}
	}
	closedir(d);
	return ok;
}

static void if_up(int s, const char *name)
{
	struct ifreq ifr = {0};
	strcpy(ifr.ifr_name, name);
	if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
		ifr.ifr_flags |= IFF_UP;
		ioctl(s, SIOCSIFFLAGS, &ifr);
	}
}

static void set_addr(struct sockaddr *sa, const char *dotted)
{
	struct sockaddr_in *in = (struct sockaddr_in *)sa;
	in->sin_family = AF_INET;
	inet_aton(dotted, &in->sin_addr);
}

static int find_eth0(char *out, size_t n)
{
	snprintf(out, n, "/sys/class/net/eth0");
	return access(out, F_OK) == 0;
}

static int have_net;

/* QEMU's user-mode network has fixed addresses: no DHCP client needed. */
static void network_up(void)
{
	char path[64];
	struct ifreq ifr = {0};
	struct rtentry rt = {0};
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if_up(s, "lo");
	const char *net = param("lamina.net");
	if (!net || strcmp(net, "nat")) {
		close(s);
		return;
	}
	load_modules("/lib/modules/net.list");
	wait_for(find_eth0, path, sizeof path, "network interface eth0");
	strcpy(ifr.ifr_name, "eth0");
	set_addr(&ifr.ifr_addr, "10.0.2.15");
	if (ioctl(s, SIOCSIFADDR, &ifr) < 0)
		fatal("eth0: set address: %s", strerror(errno));
	set_addr(&ifr.ifr_netmask, "255.255.255.0");
	ioctl(s, SIOCSIFNETMASK, &ifr);
	if_up(s, "eth0");
	set_addr(&rt.rt_dst, "0.0.0.0");
	set_addr(&rt.rt_genmask, "0.0.0.0");
	set_addr(&rt.rt_gateway, "10.0.2.2");
	rt.rt_flags = RTF_UP | RTF_GATEWAY;
	if (ioctl(s, SIOCADDRT, &rt) < 0)
		fatal("default route: %s", strerror(errno));
	close(s);
	have_net = 1;
}

static void write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (fd < 0 || write(fd, text, strlen(text)) < 0)
		say("cannot write %s: %s", path, strerror(errno));
	if (fd >= 0)
		close(fd);
}

/* The container's identity files, in the writable overlay (the image's own are hidden). */
static void etc_files(void)
{
	char text[512], host[65] = "localhost";
	gethostname(host, sizeof host);
	mkdir("/newroot/etc", 0755);
	snprintf(text, sizeof text, "%s\n", host);
	write_file("/newroot/etc/hostname", text);
	snprintf(text, sizeof text,
		 "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n%s\t%s\n",
		 have_net ? "10.0.2.15" : "127.0.1.1", host);
	write_file("/newroot/etc/hosts", text);
	if (have_net)
		write_file("/newroot/etc/resolv.conf", "nameserver 10.0.2.3\n");
}

static const char *root_dev;
static int find_root(char *out, size_t n)
{
	snprintf(out, n, "%s", root_dev);
	return access(out, F_OK) == 0;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c |= 0x20;
	return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Decode a %XX-encoded lamina.fs field in place; -1 when malformed (or a NUL byte). */
static int unpercent(char *s)
{
	char *w = s;
	for (char *r = s; *r; r++, w++) {
		if (*r != '%') {
			*w = *r;
			continue;
		}
		int hi = hexval(r[1]), lo = hi < 0 ? -1 : hexval(r[2]);
		if (lo < 0 || (hi | lo) == 0)
			return -1;
		*w = (char)(hi << 4 | lo);
		r += 2;
	}
	*w = 0;
	return 0;
}

static long openat2_in_root(int root, const char *rel)
{
	struct open_how how = {
		.flags = O_PATH | O_DIRECTORY | O_CLOEXEC,
		.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
	};
	return syscall(SYS_openat2, root, rel, &how, sizeof how);
}

/* The container directory `path` (absolute, no "..") as an O_PATH fd. Symlinks on the
 * way resolve inside /newroot, as the container sees them, never out of it; missing
 * directories are created (0755) in the overlay, as Docker creates a mount point. */
static int open_mount_point(const char *path)
{
	char rel[4096] = ".";
	size_t len = 1;
	int root = open("/newroot", O_PATH | O_DIRECTORY | O_CLOEXEC);
	int cur = root < 0 ? -1 : dup(root);
	for (const char *p = path; cur >= 0 && *p;) {
		size_t n = strcspn(p, "/");
		if (n == 0 || (n == 1 && *p == '.')) {
			p += n + (p[n] == '/');
			continue;
		}
		if ((n == 2 && !strncmp(p, "..", 2)) || len + 1 + n >= sizeof rel) {
			close(cur);
			cur = -1;
			errno = EINVAL;
			break;
		}
		rel[len++] = '/';
		memcpy(rel + len, p, n);
		rel[len += n] = 0;
		long fd = openat2_in_root(root, rel);
		if (fd < 0 && errno == ENOENT) {
			char name[256];
			snprintf(name, sizeof name, "%.*s", (int)n, p);
			if (mkdirat(cur, name, 0755) == 0 || errno == EEXIST)
				fd = openat2_in_root(root, rel);
		}
		int saved = errno;
		close(cur);
		cur = (int)fd;
		errno = saved;
		p += n + (p[n] == '/');
	}
	if (root >= 0)
		close(root);
	return cur;
}

/* lamina.fs=TAG[:DEST[:ro]],... (fields %XX-encoded): the VM's shared directories. Each
 * tag with a DEST is mounted there (virtiofs; read-only with "ro", which the host also
 * enforces); a tag alone is only attached, for the workload to mount. */
/* The value of the last KEY=VALUE on the command line into out (param() keeps only
 * 255 bytes: mount lists are longer); 0 when absent. */
static int long_param(const char *key, char *out, size_t n)
{
	size_t kl = strlen(key);
	int found = 0;
	for (char *p = cmdline; *p;) {
		while (*p == ' ' || *p == '\n')
			p++;
		char *end = p + strcspn(p, " \n");
		if ((size_t)(end - p) > kl && !strncmp(p, key, kl) && p[kl] == '=') {
			snprintf(out, n, "%.*s", (int)(end - p - kl - 1), p + kl + 1);
			found = 1;
		}
		p = end;
	}
	return found;
}

/* The container path dest as a mount target: checked, opened inside /newroot
 * (open_mount_point), named through /proc/self/fd in target; the fd to close after. */
static int mount_target(const char *what, const char *dest, char *target, size_t n)
{
	if (dest[0] != '/' || !dest[strspn(dest, "/")])
		fatal("%s: %s is not a mount point (an absolute path other than /)", what, dest);
	int fd = open_mount_point(dest);
	if (fd < 0)
		fatal("mount point %s: %s", dest, strerror(errno));
	snprintf(target, n, "/proc/self/fd/%d", fd);
	return fd;
}

static void mount_shared(void)
{
	static char spec[4096];
	if (!long_param("lamina.fs", spec, sizeof spec))
		return;
	load_modules("/lib/modules/fs.list");
	char *save = NULL;
	for (char *e = strtok_r(spec, ",", &save); e; e = strtok_r(NULL, ",", &save)) {
		char *tag = e, *dest = strchr(e, ':'), *opt = NULL;
		if (dest) {
			*dest++ = 0;
			if ((opt = strchr(dest, ':')))
				*opt++ = 0;
		}
		if (unpercent(tag) || (dest && unpercent(dest)))
			fatal("lamina.fs: malformed entry for tag %s", tag);
		if (!dest)
			continue;
		if (opt && strcmp(opt, "ro"))
			fatal("lamina.fs: unknown option %s for %s", opt, dest);
		char target[64];
		int fd = mount_target("lamina.fs", dest, target, sizeof target);
		/* The device is probed when the module loads; a short grace, just in case. */
		for (int i = 0; mount(tag, target, "virtiofs", opt ? MS_RDONLY : 0, NULL) < 0; i++) {
			if (i >= 1000 || (errno != EINVAL && errno != ENOENT && errno != ENODEV))
				fatal("mount virtiofs %s on %s: %s", tag, dest, strerror(errno));
			usleep(1000);
		}
		close(fd);
	}
}

/* lamina.tmpfs=DEST:FLAGS:DATA,... (DEST and DATA percent-encoded, FLAGS the MS_* bits
 * in hex): the container's --tmpfs mounts, made in /newroot like the shares. */
static void mount_tmpfs(void)
{
	static char spec[4096];
	if (!long_param("lamina.tmpfs", spec, sizeof spec))
		return;
	char *save = NULL;
	for (char *e = strtok_r(spec, ",", &save); e; e = strtok_r(NULL, ",", &save)) {
		char *dest = e, *flags = strchr(e, ':'), *data = NULL;
		if (flags) {
			*flags++ = 0;
			if ((data = strchr(flags, ':')))
				*data++ = 0;
		}
		if (!data || unpercent(dest) || unpercent(data))
			fatal("lamina.tmpfs: malformed entry %s", e);
		char target[64];
		int fd = mount_target("lamina.tmpfs", dest, target, sizeof target);
		if (mount("tmpfs", target, "tmpfs", strtoul(flags, NULL, 16), data) < 0)
			fatal("mount tmpfs on %s: %s", dest, strerror(errno));
		close(fd);
	}
}

static void mount_root(void)
{
	char dev[256], opts[128];
	const char *type = param("lamina.rootfstype");
	root_dev = param("lamina.root");
	if (!root_dev)
		return;
	wait_for(find_root, dev, sizeof dev, dev);
	mnt(dev, "/lower", type ? type : "erofs", MS_RDONLY, NULL);
	/* lamina.base=DEV: a VM base bundle's disk, stacked under the image's layers the
	 * way a FROM image is (lamina run --vm-base). */
	const char *lower = "/lower";
	root_dev = param("lamina.base");
	if (root_dev) {
		const char *btype = param("lamina.basefstype");
		wait_for(find_root, dev, sizeof dev, dev);
		mkdir("/base", 0755);
		mnt(dev, "/base", btype ? btype : "ext4", MS_RDONLY, NULL);
		lower = "/lower:/base";
	}
	mnt("tmpfs", "/rw", "tmpfs", 0, "mode=0755");
	mkdir("/rw/upper", 0755);
	mkdir("/rw/work", 0755);
	snprintf(opts, sizeof opts, "lowerdir=%s,upperdir=/rw/upper,workdir=/rw/work", lower);
	mnt("overlay", "/newroot", "overlay", 0, opts);
	mnt("proc", "/newroot/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mnt("sysfs", "/newroot/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mnt("devtmpfs", "/newroot/dev", "devtmpfs", MS_NOSUID, NULL);
	mnt("devpts", "/newroot/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
	    "newinstance,ptmxmode=0666,mode=0620,gid=5"); /* group tty, as Docker's */
	snprintf(opts, sizeof opts, "mode=1777");
	mnt("shm", "/newroot/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, opts);
	etc_files();
	mount_shared();
	mount_tmpfs();
	have_root = 1;
}

/* HELLO's timestamps (docs/VM_AGENT.md): CLOCK_BOOTTIME at /init, modules, port, root,
 * hello; the TSC at /init and at hello. */
static uint64_t hello_t[7];

static void send_hello(void)
{
	unsigned char hello[8 + 8 * 7];
	put32(hello, PROTO_VERSION);
	put32(hello + 4, 7);
	hello_t[4] = now_ns();
	hello_t[6] = rdtsc();
	for (int i = 0; i < 7; i++)
		put64(hello + 8 + 8 * i, hello_t[i]);
	send_frame(T_HELLO, 0, hello, sizeof hello);
}

/* CONFIGURE: u64 CLOCK_REALTIME ns, u32 hostname length, hostname, then a seed for the
 * random number generator. Sent after a restore: the snapshot's wall clock is stale,
 * its hostname the template's, and every clone would otherwise draw the same random
 * numbers. The seed is credited and the CRNG reseeded at once (a plain write to
 * /dev/urandom would only reach the CRNG at its next periodic reseed). */
static void configure(unsigned char *p, size_t len)
{
	if (len < 12 || get32(p + 8) > len - 12 || get32(p + 8) > 64) {
		send_frame(T_ERROR, 0, "malformed CONFIGURE", 19);
		return;
	}
	uint64_t ns = (uint64_t)get32(p) << 32 | get32(p + 4);
	struct timespec ts = {.tv_sec = ns / 1000000000u, .tv_nsec = ns % 1000000000u};
	if (ns && clock_settime(CLOCK_REALTIME, &ts) < 0)
		say("cannot set the clock: %s", strerror(errno));
	size_t hl = get32(p + 8);
	if (hl > 0 && sethostname((char *)p + 12, hl) < 0)
		say("cannot set the hostname: %s", strerror(errno));
	if (hl > 0 && have_root)
		etc_files();
	size_t sl = len - 12 - hl;
	if (sl > 512)
		sl = 512;
	if (sl > 0) {
		struct {
			struct rand_pool_info info;
			unsigned char buf[512];
		} e;
		e.info.entropy_count = (int)(sl * 8);
		e.info.buf_size = (int)sl;
		memcpy(e.info.buf, p + 12 + hl, sl);
		int fd = open("/dev/urandom", O_RDWR | O_CLOEXEC);
		if (fd < 0 || ioctl(fd, RNDADDENTROPY, &e.info) < 0 ||
		    (ioctl(fd, RNDRESEEDCRNG) < 0 && errno != ENODATA))
			say("cannot seed the random number generator: %s", strerror(errno));
		if (fd >= 0)
			close(fd);
	}
	send_hello();
}

/* -- NETWORK: NICs on bridge networks --------------------------------------------- */

/* IPv6's SIOCSIFADDR argument (linux/ipv6.h, which clashes with glibc's headers). */
struct in6_ifreq_ {
	struct in6_addr addr;
	uint32_t prefixlen;
	int ifindex;
};

/* The name of the interface whose MAC is mac ("aa:bb:..."), into out; 0 when none. */
static const char *wanted_mac;
static int find_mac(char *out, size_t n)
{
	DIR *d = opendir("/sys/class/net");
	struct dirent *e;
	int ok = 0;
	if (!d)
		return 0;
	while (!ok && (e = readdir(d))) {
		char p[300], mac[32] = {0};
		if (e->d_name[0] == '.')
			continue;
		snprintf(p, sizeof p, "/sys/class/net/%s/address", e->d_name);
		int fd = open(p, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		ssize_t r = read(fd, mac, sizeof mac - 1);
		close(fd);
		if (r >= 17 && !strncasecmp(mac, wanted_mac, 17)) {
			snprintf(out, n, "%s", e->d_name);
			ok = 1;
		}
	}
	closedir(d);
	return ok;
}

static void rename_link(int s, const char *from, const char *to)
{
	struct ifreq ifr = {0};
	if (!strcmp(from, to))
		return;
	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", from);
	snprintf(ifr.ifr_newname, IFNAMSIZ, "%s", to);
	if (ioctl(s, SIOCSIFNAME, &ifr) < 0)
		fatal("rename %s to %s: %s", from, to, strerror(errno));
}

static void set_prefix(struct sockaddr *sa, int prefix)
{
	struct sockaddr_in *in = (struct sockaddr_in *)sa;
	in->sin_family = AF_INET;
	in->sin_addr.s_addr = prefix ? htonl(~0u << (32 - prefix)) : 0;
}

static void write_sysctl(const char *path, const char *value)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd >= 0) {
		if (write(fd, value, strlen(value)) < 0)
			say("cannot write %s: %s", path, strerror(errno));
		close(fd);
	}
}

/* ADDR/PREFIX onto the link (IPv4 or IPv6); "-" is none. */
static void add_address(int s, int s6, const char *name, char *cidr)
{
	if (!strcmp(cidr, "-"))
		return;
	char *slash = strchr(cidr, '/');
	int prefix = slash ? atoi(slash + 1) : -1;
	if (slash)
		*slash = 0;
	struct ifreq ifr = {0};
	snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
	struct in_addr a4;
	struct in6_addr a6;
	if (prefix >= 0 && prefix <= 32 && inet_pton(AF_INET, cidr, &a4) == 1) {
		set_addr(&ifr.ifr_addr, cidr);
		if (ioctl(s, SIOCSIFADDR, &ifr) < 0)
			fatal("%s: set address %s: %s", name, cidr, strerror(errno));
		set_prefix(&ifr.ifr_netmask, prefix);
		if (ioctl(s, SIOCSIFNETMASK, &ifr) < 0)
			fatal("%s: set prefix /%d: %s", name, prefix, strerror(errno));
	} else if (prefix >= 0 && prefix <= 128 && inet_pton(AF_INET6, cidr, &a6) == 1) {
		if (s6 < 0 || ioctl(s, SIOCGIFINDEX, &ifr) < 0)
			fatal("%s: IPv6 is not available: %s", name, strerror(errno));
		struct in6_ifreq_ r6 = {.addr = a6, .prefixlen = prefix, .ifindex = ifr.ifr_ifindex};
		if (ioctl(s6, SIOCSIFADDR, &r6) < 0)
			fatal("%s: set address %s/%d: %s", name, cidr, prefix, strerror(errno));
	} else {
		fatal("NETWORK: malformed address %s", cidr);
	}
}

static void default_route(int s, int s6, const char *gw, const char *name)
{
	struct in6_addr a6;
	if (strchr(gw, ':')) {
		struct in6_rtmsg rt = {0};
		struct ifreq ifr = {0};
		snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
		if (s6 < 0 || inet_pton(AF_INET6, gw, &a6) != 1 || ioctl(s, SIOCGIFINDEX, &ifr) < 0)
			fatal("NETWORK: bad IPv6 gateway %s via %s", gw, name);
		rt.rtmsg_gateway = a6;
		rt.rtmsg_flags = RTF_UP | RTF_GATEWAY;
		rt.rtmsg_metric = 1;
		rt.rtmsg_ifindex = ifr.ifr_ifindex;
		if (ioctl(s6, SIOCADDRT, &rt) < 0)
			fatal("IPv6 default route via %s: %s", gw, strerror(errno));
		return;
	}
	struct rtentry rt = {0};
	set_addr(&rt.rt_dst, "0.0.0.0");
	set_addr(&rt.rt_genmask, "0.0.0.0");
	set_addr(&rt.rt_gateway, gw);
	rt.rt_flags = RTF_UP | RTF_GATEWAY;
	rt.rt_dev = (char *)name;
	if (ioctl(s, SIOCADDRT, &rt) < 0)
		fatal("default route via %s: %s", gw, strerror(errno));
}

struct nic {
	char name[IFNAMSIZ], mac[18], tmp[IFNAMSIZ], v4[64], v6[64];
	int mtu;
};

/* Each NIC found by its MAC, renamed, its MTU and addresses set, brought up. */
static void setup_nics(int s, int s6, struct nic *nic, int nics)
{
	if (nics == 0)
		return;
	load_modules("/lib/modules/net.list");
	for (int i = 0; i < nics; i++) {
		char cur[IFNAMSIZ + 8];
		wanted_mac = nic[i].mac;
		wait_for(find_mac, cur, sizeof cur, nic[i].mac);
		/* Two steps: what is to be eth0 may be called eth1 now, and the reverse. */
		snprintf(nic[i].tmp, IFNAMSIZ, "lamina%u", (unsigned)i % 10u);
		rename_link(s, cur, nic[i].tmp);
	}
	for (int i = 0; i < nics; i++) {
		struct ifreq ifr = {0};
		char path[96];
		rename_link(s, nic[i].tmp, nic[i].name);
		/* The host's IPAM made the address unique: usable at once, not tentative. */
		snprintf(path, sizeof path, "/proc/sys/net/ipv6/conf/%.15s/accept_dad", nic[i].name);
		write_sysctl(path, "0");
		snprintf(ifr.ifr_name, IFNAMSIZ, "%.15s", nic[i].name);
		ifr.ifr_mtu = nic[i].mtu;
		if (nic[i].mtu > 0 && ioctl(s, SIOCSIFMTU, &ifr) < 0)
			fatal("%s: set MTU %d: %s", nic[i].name, nic[i].mtu, strerror(errno));
		add_address(s, s6, nic[i].name, nic[i].v4);
		if_up(s, nic[i].name);
		add_address(s, s6, nic[i].name, nic[i].v6);
	}
}

/* NETWORK (docs/VM_AGENT.md): lines "nic NAME MAC MTU IPV4/P|- IPV6/P|-", then
 * "down NAME" (a NIC whose network was disconnected), "route GATEWAY NAME" (an IPv4
 * or IPv6 default route), then "file NAME LENGTH" each
 * followed by LENGTH bytes: the container's /etc/NAME (hostname, hosts, resolv.conf).
 * A step that fails powers the VM off (the host reports it as a failed start). */
static void network(unsigned char *p, size_t len)
{
	static struct nic nic[MAX_NETWORKS];
	char *text = malloc(len + 1), *save = NULL;
	int nics = 0, done = 0, s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	int s6 = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (!text)
		fatal("NETWORK: out of memory");
	memcpy(text, p, len);
	text[len] = 0;
	for (char *line = text, *end = text + len; line < end;) {
		char *nl = memchr(line, '\n', end - line);
		if (!nl)
			fatal("NETWORK: unterminated line");
		*nl = 0;
		char *word = strtok_r(line, " ", &save);
		if (word && strcmp(word, "nic") && !done) {
			setup_nics(s, s6, nic, nics);
			done = 1;
		}
		if (!word) {
		} else if (!strcmp(word, "nic")) {
			char *f[5];
			for (int i = 0; i < 5; i++)
				if (!(f[i] = strtok_r(NULL, " ", &save)))
					fatal("NETWORK: malformed nic line");
			if (done || nics == MAX_NETWORKS)
				fatal("NETWORK: too many or misplaced nic lines");
			snprintf(nic[nics].name, IFNAMSIZ, "%s", f[0]);
			snprintf(nic[nics].mac, sizeof nic[nics].mac, "%s", f[1]);
			nic[nics].mtu = atoi(f[2]);
			snprintf(nic[nics].v4, sizeof nic[nics].v4, "%s", f[3]);
			snprintf(nic[nics].v6, sizeof nic[nics].v6, "%s", f[4]);
			nics++;
		} else if (!strcmp(word, "down")) { /* its network was disconnected */
			char *dev = strtok_r(NULL, " ", &save);
			struct ifreq ifr = {0};
			if (!dev)
				fatal("NETWORK: malformed down line");
			snprintf(ifr.ifr_name, IFNAMSIZ, "%s", dev);
			if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
				ifr.ifr_flags &= ~IFF_UP;
				ioctl(s, SIOCSIFFLAGS, &ifr);
			}
		} else if (!strcmp(word, "route")) {
			char *gw = strtok_r(NULL, " ", &save), *dev = strtok_r(NULL, " ", &save);
			if (!gw || !dev)
				fatal("NETWORK: malformed route line");
			default_route(s, s6, gw, dev);
		} else if (!strcmp(word, "file")) {
			char *name = strtok_r(NULL, " ", &save), *n = strtok_r(NULL, " ", &save);
			size_t flen = n ? strtoul(n, NULL, 10) : 0;
			if (!name || !n || flen > (size_t)(end - nl - 1))
				fatal("NETWORK: malformed file line");
			if (strcmp(name, "hostname") && strcmp(name, "hosts") && strcmp(name, "resolv.conf"))
				fatal("NETWORK: %s is not a file the agent writes", name);
			char path[64], *body = nl + 1, saved = body[flen];
			body[flen] = 0;
			snprintf(path, sizeof path, "/newroot/etc/%s", name);
			if (have_root)
				write_file(path, body);
			body[flen] = saved;
			nl = body + flen - 1;
		} else {
			fatal("NETWORK: unknown line %s", word);
		}
		line = nl + 1;
	}
	if (!done)
		setup_nics(s, s6, nic, nics);
	free(text);
	close(s);
	if (s6 >= 0)
		close(s6);
}

static struct session *find_session(uint32_t id)
{
	for (int i = 0; i < MAX_SESSIONS; i++)
		if (sessions[i].pid > 0 && sessions[i].id == id)
			return &sessions[i];
	return NULL;
}

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

/* Forward what a child wrote; returns 0 at EOF or when nothing is left to read. */
static int pump(struct session *s, int *fd, int type)
{
	char buf[65536];
	ssize_t r = read(*fd, buf, sizeof buf);
	if (r > 0) {
		send_frame(type, s->id, buf, r);
		return 1;
	}
	if (r == 0 || (errno != EAGAIN && errno != EINTR))
		close_fd(fd);
	return 0;
}

static void flush_stdin(struct session *s)
{
	while (s->in >= 0 && s->inlen > 0) {
		ssize_t w = write(s->in, s->inbuf, s->inlen);
		if (w < 0) {
			if (errno == EAGAIN)
				return;
			s->inlen = 0; /* the child closed its stdin: drop the rest */
			break;
		}
		memmove(s->inbuf, s->inbuf + w, s->inlen - w);
		s->inlen -= w;
	}
	if (s->in_eof && s->inlen == 0)
		close_fd(&s->in);
}

/* EXEC_TTY: a new terminal in the container's devpts instance (mounted with
 * newinstance,ptmxmode=0666 at /newroot/dev/pts), owned by the process's user as runc
 * does, with the host terminal's size. Returns the slave (both ends close-on-exec) and
 * stores the master in *master; -1 with errno on failure. TIOCGPTPEER opens the slave
 * through the master's own mount, so the process sees it as /dev/pts/N. */
static int open_pty(int *master, uid_t uid, unsigned rows, unsigned cols)
{
	int unlock = 0, saved;
	struct winsize ws = {.ws_row = rows, .ws_col = cols};
	*master = open(have_root ? "/newroot/dev/pts/ptmx" : "/dev/ptmx",
		       O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (*master < 0)
		return -1;
	int slave = -1;
	if (ioctl(*master, TIOCSPTLCK, &unlock) == 0)
		slave = ioctl(*master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (slave < 0) {
		saved = errno;
		close(*master);
		errno = saved;
		return -1;
	}
	if (fchown(slave, uid, -1) < 0)
		say("cannot give the terminal to uid %u: %s", uid, strerror(errno));
	if (rows && cols)
		ioctl(*master, TIOCSWINSZ, &ws);
	return slave;
}

/* Child side of EXEC; never returns. Failures go to `report` as (stage, errno). */
static void child(int report, char **argv, char **envp, const char *cwd, uid_t uid, gid_t gid,
		  gid_t *groups, int ngroups, int flags)
{
	sigset_t all;
	int fail[2] = {0, 0};
	sigemptyset(&all);
	sigprocmask(SIG_SETMASK, &all, NULL);
	setsid();
	if ((flags & EXEC_TTY) && ioctl(0, TIOCSCTTY, 0) < 0) {
		fail[0] = 5;
		goto out;
	}
	int tool = -1;
	if ((flags & EXEC_TOOL) && (tool = open("/bin/busybox", O_RDONLY | O_CLOEXEC)) < 0) {
		fail[0] = 4;
		goto out;
	}
	if (have_root && !(flags & EXEC_HOST) && (chdir("/newroot") < 0 || chroot(".") < 0)) {
		fail[0] = 1;
		goto out;
	}
	char path[4096];
	snprintf(path, sizeof path, "%s", cwd);
	mkdir_p(path, 0755); /* Docker creates a missing working directory */
	if (chdir(cwd) < 0) {
		fail[0] = 2;
		goto out;
	}
	if (setgroups(ngroups, groups) < 0 || setgid(gid) < 0 || setuid(uid) < 0) {
		fail[0] = 3;
		goto out;
	}
	environ = envp;
	if (tool >= 0)
		fexecve(tool, argv, envp);
	else
		execvp(argv[0], argv);
	fail[0] = 4;
out:
	fail[1] = errno;
	if (write(report, fail, sizeof fail) < 0)
		_exit(125);
	_exit(fail[0] == 4 && (errno == ENOENT || errno == ENOTDIR) ? 127 : 126);
}

/* EXEC payload: NUL-terminated fields: uid, gid, groups (comma list), cwd, flags, argc,
 * argv..., envc, env...  */
static void do_exec(uint32_t id, char *p, size_t len)
{
	char *f[8192];
	size_t nf = 0;
	for (char *q = p; q < p + len && nf < 8192; q += strlen(q) + 1)
		f[nf++] = q;
	if (nf < 7 || p[len - 1] != 0)
		return send_frame(T_ERROR, id, "malformed EXEC", 14);
	size_t argc = strtoul(f[5], NULL, 10);
	if (argc < 1 || 6 + argc >= nf)
		return send_frame(T_ERROR, id, "malformed EXEC", 14);
	size_t envc = strtoul(f[6 + argc], NULL, 10);
	int flags = atoi(f[4]);
	size_t extra = flags & EXEC_TTY ? 2 : 0; /* the terminal's rows and columns */
	if (7 + argc + envc + extra != nf)
		return send_frame(T_ERROR, id, "malformed EXEC", 14);
	struct session *s = NULL;
	for (int i = 0; i < MAX_SESSIONS && !s; i++)
		if (sessions[i].pid == 0)
			s = &sessions[i];
	if (!s || find_session(id))
		return send_frame(T_ERROR, id, "no free session slot or duplicate session", 41);

	gid_t groups[64];
	int ngroups = 0;
	for (char *g = f[2]; *g && ngroups < 64; g += strcspn(g, ","), g += *g == ',')
		groups[ngroups++] = strtoul(g, NULL, 10);
	char *argv[argc + 1], *envp[envc + 1];
	memcpy(argv, f + 6, argc * sizeof *argv);
	argv[argc] = NULL;
	memcpy(envp, f + 7 + argc, envc * sizeof *envp);
	envp[envc] = NULL;

	int o[2], e[2], in[2] = {-1, -1}, rep[2], pty = -1;
	if (flags & EXEC_TTY) {
		uid_t uid = strtoul(f[0], NULL, 10);
		int tty = open_pty(&pty, uid, strtoul(f[7 + argc + envc], NULL, 10),
				   strtoul(f[8 + argc + envc], NULL, 10));
		if (tty < 0 || pipe2(rep, O_CLOEXEC)) {
			char msg[200];
			snprintf(msg, sizeof msg, "cannot allocate a terminal: %s", strerror(errno));
			if (tty >= 0)
				close(tty), close(pty);
			return send_frame(T_ERROR, id, msg, strlen(msg));
		}
		/* The slave is the child's stdin, stdout and stderr; the master our only
		 * output stream and, with EXEC_STDIN, where STDIN frames go. */
		o[0] = fcntl(pty, F_DUPFD_CLOEXEC, 0), o[1] = tty;
		e[0] = -1, e[1] = fcntl(tty, F_DUPFD_CLOEXEC, 0);
		in[0] = fcntl(tty, F_DUPFD_CLOEXEC, 0);
		in[1] = flags & EXEC_STDIN ? fcntl(pty, F_DUPFD_CLOEXEC, 0) : -1;
	} else {
		if (pipe2(o, O_CLOEXEC) || pipe2(e, O_CLOEXEC) || pipe2(rep, O_CLOEXEC) ||
		    ((flags & EXEC_STDIN) && pipe2(in, O_CLOEXEC)))
			return send_frame(T_ERROR, id, "pipe failed", 11);
		if (!(flags & EXEC_STDIN))
			in[0] = open("/dev/null", O_RDONLY | O_CLOEXEC);
	}
	pid_t pid = fork();
	if (pid == 0) {
		dup2(in[0], 0);
		dup2(o[1], 1);
		dup2(e[1], 2);
		child(rep[1], argv, envp, f[3], strtoul(f[0], NULL, 10), strtoul(f[1], NULL, 10),
		      groups, ngroups, flags);
	}
	close(o[1]);
	close(e[1]);
	close(rep[1]);
	close(in[0]);
	if (pid < 0) {
		close(o[0]), close_fd(&e[0]), close(rep[0]), close_fd(&in[1]), close_fd(&pty);
		return send_frame(T_ERROR, id, "fork failed", 11);
	}
	*s = (struct session){.id = id, .pid = pid, .out = o[0], .err = e[0], .in = in[1],
			      .pty = pty};
	fcntl(s->out, F_SETFL, O_NONBLOCK);
	if (s->err >= 0)
		fcntl(s->err, F_SETFL, O_NONBLOCK);
	if (s->in >= 0)
		fcntl(s->in, F_SETFL, O_NONBLOCK);

	int fail[2];
	ssize_t r;
	while ((r = read(rep[0], fail, sizeof fail)) < 0 && errno == EINTR)
		;
	close(rep[0]);
	if (r == (ssize_t)sizeof fail) {
		static const char *stage[] = {"", "chroot", "chdir", "set user", "exec",
					      "set controlling terminal"};
		char msg[600];
		if (fail[0] == 4 && fail[1] == ENOENT && !strchr(argv[0], '/'))
			snprintf(msg, sizeof msg, "exec: \"%.200s\": executable file not found in $PATH",
				 argv[0]);
		else if (fail[0] == 2)
			snprintf(msg, sizeof msg, "chdir to cwd (\"%.200s\"): %s", f[3],
				 strerror(fail[1]));
		else
			snprintf(msg, sizeof msg, "%s \"%.200s\": %s", stage[fail[0] >= 1 && fail[0] <= 5 ? fail[0] : 4],
				 argv[0], strerror(fail[1]));
		send_frame(T_ERROR, id, msg, strlen(msg));
		return; /* EXIT follows when the child is reaped */
	}
	unsigned char st[12];
	put32(st, pid);
	put64(st + 4, now_ns());
	send_frame(T_STARTED, id, st, sizeof st);
}

static void reap(void)
{
	int status;
	pid_t pid;
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		for (int i = 0; i < MAX_SESSIONS; i++) {
			struct session *s = &sessions[i];
			if (s->pid != pid)
				continue;
			/* Everything the child wrote is in the pipes now: forward it first. */
			while (s->out >= 0 && pump(s, &s->out, T_STDOUT))
				;
			while (s->err >= 0 && pump(s, &s->err, T_STDERR))
				;
			close_fd(&s->out), close_fd(&s->err), close_fd(&s->in), close_fd(&s->pty);
			free(s->inbuf);
			unsigned char ex[16] = {0};
			int sig = WIFSIGNALED(status);
			ex[0] = sig;
			ex[1] = sig && WCOREDUMP(status);
			put32(ex + 4, sig ? WTERMSIG(status) : WEXITSTATUS(status));
			put64(ex + 8, now_ns());
			send_frame(T_EXIT, s->id, ex, sizeof ex);
			*s = (struct session){0};
		}
	}
}

static void handle(int type, uint32_t id, unsigned char *p, size_t len)
{
	struct session *s;
	switch (type) {
	case T_PING:
		send_frame(T_PONG, id, p, len);
		break;
	case T_EXEC:
		do_exec(id, (char *)p, len);
		break;
	case T_STDIN:
		if (!(s = find_session(id)) || s->in < 0)
			break;
		if (len == 0 && s->pty >= 0) {
			/* A terminal has no end of input to close: type its EOF character
			 * (^D), which ends a read in canonical mode, as at a keyboard. */
			struct termios t;
			static unsigned char eof[1];
			eof[0] = tcgetattr(s->pty, &t) == 0 && t.c_cc[VEOF] ? t.c_cc[VEOF] : 4;
			p = eof, len = 1;
		}
		if (len == 0) {
			s->in_eof = 1;
		} else {
			char *nb = realloc(s->inbuf, s->inlen + len);
			if (!nb)
				break;
			s->inbuf = nb;
			memcpy(s->inbuf + s->inlen, p, len);
			s->inlen += len;
		}
		flush_stdin(s);
		break;
	case T_SIGNAL:
		if (len >= 4 && (s = find_session(id)))
			kill(s->pid, get32(p));
		break;
	case T_SHUTDOWN:
		sync();
		reboot(RB_AUTOBOOT); /* QEMU runs with -no-reboot: a reset ends it */
		break;
	case T_CONFIGURE:
		configure(p, len);
		break;
	case T_NETWORK:
		network(p, len);
		break;
	case T_RESIZE:
		if (len >= 4 && (s = find_session(id)) && s->pty >= 0) {
			/* The kernel sends SIGWINCH to the terminal's foreground process group. */
			struct winsize ws = {.ws_row = p[0] << 8 | p[1], .ws_col = p[2] << 8 | p[3]};
			ioctl(s->pty, TIOCSWINSZ, &ws);
		}
		break;
	default:
		send_frame(T_ERROR, id, "unknown message type", 20);
	}
}

int main(void)
{
	uint64_t *t = hello_t;
	t[5] = rdtsc();
	t[0] = now_ns();
	mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, NULL);
	mnt("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mnt("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		ssize_t r = read(fd, cmdline, sizeof cmdline - 1);
		cmdline[r > 0 ? r : 0] = 0;
		close(fd);
	}
	const char *host = param("lamina.hostname");
	if (host)
		sethostname(host, strlen(host));

	load_modules("/lib/modules/load.list");
	t[1] = now_ns();
	char dev[300];
	wait_for(find_port, dev, sizeof dev, "the lamina.agent virtio port");
	if ((port = open(dev, O_RDWR | O_CLOEXEC)) < 0)
		fatal("open %s: %s", dev, strerror(errno));
	t[2] = now_ns();
	network_up();
	mount_root();
	t[3] = now_ns();

	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGCHLD);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);

	send_hello();

	unsigned char *buf = malloc(HDR + MAX_PAYLOAD);
	size_t have = 0;
	for (;;) {
		struct pollfd pf[2 + 3 * MAX_SESSIONS];
		struct session *who[2 + 3 * MAX_SESSIONS];
		int n = 0;
		pf[n++] = (struct pollfd){.fd = port, .events = POLLIN};
		pf[n++] = (struct pollfd){.fd = sfd, .events = POLLIN};
		for (int i = 0; i < MAX_SESSIONS; i++) {
			struct session *s = &sessions[i];
			if (s->pid <= 0)
				continue;
			if (s->out >= 0)
				who[n] = s, pf[n++] = (struct pollfd){.fd = s->out, .events = POLLIN};
			if (s->err >= 0)
				who[n] = s, pf[n++] = (struct pollfd){.fd = s->err, .events = POLLIN};
			if (s->in >= 0 && s->inlen)
				who[n] = s, pf[n++] = (struct pollfd){.fd = s->in, .events = POLLOUT};
		}
		if (poll(pf, n, -1) < 0)
			continue;
		for (int i = 2; i < n; i++) {
			struct session *s = who[i];
			if (!pf[i].revents || s->pid <= 0)
				continue;
			if (pf[i].fd == s->out)
				pump(s, &s->out, T_STDOUT);
			else if (pf[i].fd == s->err)
				pump(s, &s->err, T_STDERR);
			else if (pf[i].fd == s->in)
				flush_stdin(s);
		}
		if (pf[1].revents) {
			struct signalfd_siginfo si;
			while (read(sfd, &si, sizeof si) > 0)
				;
			reap();
		}
		if (pf[0].revents & POLLIN) {
			ssize_t r = read(port, buf + have, HDR + MAX_PAYLOAD - have);
			if (r > 0)
				have += r;
			while (have >= HDR) {
				uint32_t len = get32(buf + 8);
				if (len > MAX_PAYLOAD)
					fatal("protocol error: frame of %u bytes", len);
				if (have < HDR + len)
					break;
				handle(buf[0], get32(buf + 4), buf + HDR, len);
				memmove(buf, buf + HDR + len, have - HDR - len);
				have -= HDR + len;
			}
		} else if (pf[0].revents & (POLLHUP | POLLERR)) {
			usleep(10000); /* host not connected (yet): virtio-serial reports HUP */
		}
	}
}
