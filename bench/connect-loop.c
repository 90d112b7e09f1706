/*
 * connect-loop: measures the cost of connect()/sendto() (and so of the
 * egressd hooks on them) in a tight loop.
 *
 *   connect-loop [--cgroup DIR] [--netns PATH] [--max-seconds S]
 *                [--until-errno NAME] [--ready] [--interval-us N] MODE ADDR PORT ITERATIONS
 *
 * Joins the cgroup and the netns like test/helpers/probe.c, then:
 *   tcp       socket + blocking connect + close (SO_LINGER 0: no TIME_WAIT), each
 *             iteration; connect is bounded by a 2 s SO_SNDTIMEO
 *   udp       one unconnected UDP socket, ITERATIONS sendto() of one byte
 *   tcp-vary, udp-vary
 *             the same, with the destination's last byte cycling 1..254 (over the
 *             /24 or the /120 of ADDR); in the egressd test world every address
 *             in 203.0.113.0/24 and 2001:db8:ff::/64 is local
 * ECONNREFUSED counts as a completed iteration: connecting to a closed port
 * (the kernel answers with RST at once) measures the hook without a server.
 *
 * The loop also stops after S seconds (default 60), whatever ITERATIONS says.
 *
 * For timing when a policy change takes effect (bench/apply.ts):
 *   --until-errno NAME  stop at the first iteration that fails with NAME
 *                       (EPERM, ...); the JSON line then also has
 *                       "until_errno":NAME, "errno_at_ns": the CLOCK_MONOTONIC
 *                       time at which that call returned (null if it never
 *                       came), and "last_ok_ns": the time at which the last
 *                       completed iteration before it was started (null if none)
 *   --ready             print a line `ready` (flushed) once the first iteration
 *                       has completed, so a caller knows the loop is running
 *   --interval-us N     sleep N µs between iterations (timer slack 1 ns) rather
 *                       than spin, leaving the CPU to others (ns_per_op then
 *                       includes the sleeps); default 0
 * CLOCK_MONOTONIC is what Node's process.hrtime.bigint() reads on Linux, so
 * the times compare with a caller's.
 *
 * Prints one JSON line: {"mode":"tcp","iterations":N,"ns_per_op":X,
 * "completed":C,"errors":{"ECONNREFUSED":..,"EPERM":..},"timed_out":false}
 * where N is the iterations actually run, completed counts ok and
 * ECONNREFUSED, and errors every result but ok. ns_per_op is the wall time
 * (CLOCK_MONOTONIC) of the whole loop divided by N.
 * Exit 0 after the loop, 2 on a usage error, 3 when joining failed.
 */
#define _GNU_SOURCE
#include "../test/helpers/join.h"

#include <sys/prctl.h>
#include <time.h>

#define MAX_ERRORS 32

static struct {
  int err;
  long long n;
} errors[MAX_ERRORS];
static int n_errors;

static void count_error(int err) {
  int k = 0;
  while (k < n_errors && errors[k].err != err) k++;
  if (k == n_errors) {
    if (n_errors == MAX_ERRORS) return;
    errors[n_errors++].err = err;
  }
  errors[k].n++;
}

static void usage(const char *msg) {
  fprintf(stderr,
          "connect-loop: %s\n"
          "usage: connect-loop [--cgroup DIR] [--netns PATH] [--max-seconds S] [--until-errno NAME] [--ready]\n"
          "                    [--interval-us N] tcp|udp|tcp-vary|udp-vary ADDR PORT ITERATIONS\n",
          msg);
  exit(EXIT_USAGE);
}

/* Sets the last byte of the address in `ss` to `b`. */
static void set_last_byte(struct sockaddr_storage *ss, unsigned char b) {
  if (ss->ss_family == AF_INET)
    ((unsigned char *)&((struct sockaddr_in *)ss)->sin_addr)[3] = b;
  else
    ((struct sockaddr_in6 *)ss)->sin6_addr.s6_addr[15] = b;
}

/* One TCP connect; returns 0 or an errno value. */
static int tcp_once(const struct sockaddr_storage *ss, socklen_t len) {
  int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno;
  struct timeval tv = {.tv_sec = 2};
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  int err = connect(fd, (const struct sockaddr *)ss, len) < 0 ? errno : 0;
  struct linger lg = {.l_onoff = 1, .l_linger = 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  close(fd);
  return err;
}

static long long now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* The errno value named `name` ("EPERM"), or 0 if no value up to 4095 has that name. */
static int errno_by_name(const char *name) {
  for (int e = 1; e < 4096; e++)
    if (strcmp(errno_name(e), name) == 0) return e;
  return 0;
}

int main(int argc, char **argv) {
  const char *cgroup = NULL, *netns = NULL;
  long long max_seconds = 60, interval_us = 0;
  int until_errno = 0, ready = 0;
  int i = 1;
  for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
    if (strcmp(argv[i], "--cgroup") == 0 && i + 1 < argc)
      cgroup = argv[++i];
    else if (strcmp(argv[i], "--netns") == 0 && i + 1 < argc)
      netns = argv[++i];
    else if (strcmp(argv[i], "--max-seconds") == 0 && i + 1 < argc) {
      if (parse_num(argv[++i], 1, 86400, &max_seconds)) usage("bad --max-seconds");
    } else if (strcmp(argv[i], "--until-errno") == 0 && i + 1 < argc) {
      if (!(until_errno = errno_by_name(argv[++i]))) usage("bad --until-errno (an errno name such as EPERM)");
    } else if (strcmp(argv[i], "--ready") == 0)
      ready = 1;
    else if (strcmp(argv[i], "--interval-us") == 0 && i + 1 < argc) {
      if (parse_num(argv[++i], 0, 1000000, &interval_us)) usage("bad --interval-us");
    } else
      usage("unknown option or missing argument");
  }
  if (argc - i != 4) usage("expected MODE ADDR PORT ITERATIONS");
  const char *mode = argv[i];
  int tcp = strncmp(mode, "tcp", 3) == 0;
  int vary = strstr(mode, "-vary") != NULL;
  if (strcmp(mode, "tcp") && strcmp(mode, "udp") && strcmp(mode, "tcp-vary") && strcmp(mode, "udp-vary"))
    usage("MODE must be tcp, udp, tcp-vary or udp-vary");
  long long port, iterations;
  if (parse_num(argv[i + 2], 1, 65535, &port)) usage("bad PORT");
  if (parse_num(argv[i + 3], 1, 1000000000LL, &iterations)) usage("bad ITERATIONS");
  struct sockaddr_storage ss;
  socklen_t len;
  if (parse_addr(argv[i + 1], (int)port, &ss, &len)) usage("bad ADDR");

  if (cgroup && join_cgroup(cgroup)) return EXIT_JOIN;
  if (netns && join_netns(netns)) return EXIT_JOIN;

  int udp_fd = -1;
  if (!tcp) {
    udp_fd = socket(ss.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (udp_fd < 0) {
      fprintf(stderr, "connect-loop: socket: %s\n", strerror(errno));
      return 1;
    }
  }
  /* Sleeps of a few µs should last about that long, not the default 50 µs slack more. */
  if (interval_us) prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
  struct timespec pause = {.tv_sec = interval_us / 1000000, .tv_nsec = (interval_us % 1000000) * 1000};
  long long completed = 0, errno_at = -1, last_ok = -1;
  unsigned char b = 1;
  long long start = now_ns(), deadline = start + max_seconds * 1000000000LL, n = 0;
  int timed_out = 0;
  for (; n < iterations; n++) {
    if ((until_errno || interval_us || (n & 63) == 0) && now_ns() >= deadline) {
      timed_out = 1;
      break;
    }
    if (vary) {
      set_last_byte(&ss, b);
      b = b == 254 ? 1 : b + 1;
    }
    long long began = until_errno ? now_ns() : 0;
    int err;
    if (tcp)
      err = tcp_once(&ss, len);
    else
      err = sendto(udp_fd, "x", 1, 0, (const struct sockaddr *)&ss, len) < 0 ? errno : 0;
    if (err) count_error(err);
    if (until_errno && err == until_errno) {
      errno_at = now_ns();
      n++;
      break;
    }
    if (!err || err == ECONNREFUSED) {
      completed++;
      last_ok = began;
      if (ready && completed == 1) {
        printf("ready\n");
        fflush(stdout);
      }
    }
    if (interval_us) clock_nanosleep(CLOCK_MONOTONIC, 0, &pause, NULL);
  }
  long long elapsed = now_ns() - start;
  if (udp_fd >= 0) close(udp_fd);

  printf("{\"mode\":\"%s\",\"iterations\":%lld,\"ns_per_op\":%.1f,\"completed\":%lld,\"errors\":{", mode, n,
         n ? (double)elapsed / (double)n : 0.0, completed);
  for (int k = 0; k < n_errors; k++) printf("%s\"%s\":%lld", k ? "," : "", errno_name(errors[k].err), errors[k].n);
  printf("},\"timed_out\":%s", timed_out ? "true" : "false");
  if (until_errno) {
    printf(",\"until_errno\":\"%s\"", errno_name(until_errno));
    if (errno_at >= 0)
      printf(",\"errno_at_ns\":%lld", errno_at);
    else
      printf(",\"errno_at_ns\":null");
    if (last_ok >= 0)
      printf(",\"last_ok_ns\":%lld", last_ok);
    else
      printf(",\"last_ok_ns\":null");
  }
  printf("}\n");
  return 0;
}
