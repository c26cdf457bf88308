/*
 * lamina-logrotate: rotates one process container's log while conmon writes it.
 *
 * Built by lamina/runtime/_logrotate.py with `gcc -static -Os` and started by lamina
 * right after conmon, for a container with `--log-opt max-size`:
 *
 *     lamina-logrotate DIR LOG MAX_SIZE MAX_FILES CONMON_PID
 *
 * DIR is the container's bundle (conmon's `ctl` FIFO is there), LOG the live log's
 * name in DIR. The protocol is lamina/runtime/_logs.py's: once LOG has MAX_SIZE
 * bytes, (1) shift LOG.k to LOG.k+1, dropping LOG.<MAX_FILES-1>; (2) hard-link LOG as
 * LOG.1; (3) ask conmon to reopen its log ("2 0 0" on ctl), which creates LOG.tmp and
 * renames it over LOG. Until conmon has done (3), LOG is not looked at again, and
 * the request is never repeated (a second reopen would drop the file the first one
 * made). With MAX_FILES 1, (1) and (2) are skipped: the log is cut, as Docker's
 * json-file cuts it then.
 *
 * It says "ready" on stdout once it watches LOG (lamina waits for that before the
 * container runs), then sleeps in poll(2) on an inotify watch of DIR (writes to LOG,
 * renames onto it) and on conmon's pidfd. While LOG is under half of MAX_SIZE it looks
 * at most once a millisecond (a chatty container does not keep it busy); nearer the
 * limit, at every write. It exits when conmon exits or DIR goes: it never outlives
 * the container.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

static int dir_fd;
static const char *log_name;
static long long max_size;
static int max_files;
static struct stat replacing; /* the live file conmon was asked to replace */
static int waiting;           /* ... and has not replaced yet */

static void name_of(char *buf, size_t size, int k)
{
	snprintf(buf, size, "%s.%d", log_name, k);
}

static int same_file(const struct stat *a, const struct stat *b)
{
	return a->st_dev == b->st_dev && a->st_ino == b->st_ino;
}

/* Steps 1 and 2: afterwards the live file is also LOG.1. */
static int keep_live_file(const struct stat *live)
{
	char from[PATH_MAX], to[PATH_MAX];
	struct stat first;

	name_of(to, sizeof to, 1);
	if (fstatat(dir_fd, to, &first, 0) == 0 && same_file(&first, live))
		return 0; /* a rotation cut short after step 2 */
	name_of(to, sizeof to, max_files - 1);
	if (unlinkat(dir_fd, to, 0) < 0 && errno != ENOENT)
		return -1;
	for (int k = max_files - 2; k >= 1; k--) {
		name_of(from, sizeof from, k);
		name_of(to, sizeof to, k + 1);
		if (renameat(dir_fd, from, dir_fd, to) < 0 && errno != ENOENT)
			return -1;
	}
	name_of(to, sizeof to, 1);
	return linkat(dir_fd, log_name, dir_fd, to, 0);
}

static int request_reopen(void)
{
	static const char msg[] = "2 0 0\n"; /* conmon's REOPEN_LOGS_EVENT */
	int fd = openat(dir_fd, "ctl", O_WRONLY | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = write(fd, msg, sizeof msg - 1);
	close(fd);
	return n == (ssize_t)(sizeof msg - 1) ? 0 : -1;
}

/* Rotates LOG when it is due; returns its size. */
static long long check(void)
{
	struct stat live;

	if (fstatat(dir_fd, log_name, &live, 0) < 0)
		return 0;
	if (waiting) {
		if (same_file(&live, &replacing))
			return live.st_size;
		waiting = 0;
	}
	if (live.st_size < max_size)
		return live.st_size;
	if (max_files > 1 && keep_live_file(&live) < 0) {
		perror("lamina-logrotate: keeping the live log");
		return live.st_size; /* conmon is not asked: the log grows, nothing is lost */
	}
	if (request_reopen() < 0) {
		perror("lamina-logrotate: asking conmon to reopen the log");
		return live.st_size;
	}
	replacing = live;
	waiting = 1;
	return live.st_size;
}

/* Reads every queued event; returns -1 when DIR is gone, 1 when LOG changed. */
static int drain(int in)
{
	char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
	int changed = 0;
	ssize_t n;

	while ((n = read(in, buf, sizeof buf)) > 0) {
		for (char *p = buf; p < buf + n;) {
			const struct inotify_event *ev = (const struct inotify_event *)p;
			if (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED))
				return -1;
			if ((ev->len && strcmp(ev->name, log_name) == 0) || (ev->mask & IN_Q_OVERFLOW))
				changed = 1; /* an overflowed queue may have held LOG's events */
			p += sizeof *ev + ev->len;
		}
	}
	return changed;
}

int main(int argc, char **argv)
{
	if (argc != 6) {
		fprintf(stderr, "usage: lamina-logrotate DIR LOG MAX_SIZE MAX_FILES CONMON_PID\n");
		return 2;
	}
	log_name = argv[2];
	max_size = atoll(argv[3]);
	max_files = atoi(argv[4]);
	int pid = atoi(argv[5]);
	if (max_size <= 0 || max_files < 1 || pid <= 0 || strchr(log_name, '/')) {
		fprintf(stderr, "lamina-logrotate: bad arguments\n");
		return 2;
	}
	dir_fd = open(argv[1], O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (dir_fd < 0) {
		perror("lamina-logrotate: opening the container's directory");
		return 1;
	}
	int conmon = syscall(SYS_pidfd_open, pid, 0);
	if (conmon < 0)
		return 0; /* conmon is gone already: nothing will be written */
	int in = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (in < 0 || inotify_add_watch(in, argv[1],
					IN_MODIFY | IN_MOVED_TO | IN_CREATE | IN_DELETE_SELF |
						IN_MOVE_SELF | IN_ONLYDIR) < 0) {
		perror("lamina-logrotate: watching the container's directory");
		return 1;
	}
	check(); /* a log left by an earlier run may be past the limit already */
	signal(SIGPIPE, SIG_IGN); /* lamina may be gone: go on all the same */
	if (write(STDOUT_FILENO, "ready\n", 6) < 0 && errno != EPIPE)
		perror("lamina-logrotate: saying ready");
	close(STDOUT_FILENO);
	for (;;) {
		struct pollfd fds[2] = {{in, POLLIN, 0}, {conmon, POLLIN, 0}};
		if (poll(fds, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			perror("lamina-logrotate: poll");
			return 1;
		}
		if (fds[1].revents)
			return 0; /* conmon exited: the log is final */
		int changed = drain(in);
		if (changed < 0)
			return 0; /* the container was removed */
		if (changed && check() < max_size / 2) {
			struct timespec pause = {0, 1000 * 1000};
			nanosleep(&pause, NULL); /* events meanwhile are merged into one */
		}
	}
}
