/*
 * probe: "a process of a sandboxed computer" for egressd's privileged tests,
 * and the servers of the test world.
 *
 *   probe [--cgroup DIR] [--netns PATH] [--until-stdin-eof] [--report] [--announce] OP [OP...]
 *
 * Joins the cgroup (writes "0" to DIR/cgroup.procs), then the network
 * namespace (setns), then runs each OP in order and prints one JSON line per
 * OP on stdout, e.g. {"op":"tcp","target":"192.0.2.1:80","result":"ok"};
 * result is "ok" or the errno name. All OPs are parsed before any runs.
 * --announce first prints {"op":"joined","pid":PID,"result":"ok"} once the
 * process is in its cgroup and netns.
 * Exit 0 when every OP ran (whatever its result), 2 on a usage error, 3 when
 * joining the cgroup or the netns failed (message on stderr).
 *
 * ADDR is an IPv4 or IPv6 literal; the socket family follows the literal
 * (AF_INET6 for anything with ':'). IPv6 targets need brackets: [2001:db8::1]:80.
 * AF_INET6 sockets always have IPV6_V6ONLY=0.
 *
 *   tcp:ADDR:PORT            non-blocking connect, 2 s timeout (ETIMEDOUT), close
 *                            with SO_LINGER 0 (no TIME_WAIT pile-up in loops)
 *   udp-connect:ADDR:PORT    connect(), then send() one datagram
 *   udp-sendto:ADDR:PORT     unconnected sendto() of one datagram
 *   udp-sendmmsg:ADDR:PORT   sendmmsg() of 2 datagrams with msg_name; "ok" only if
 *                            both went; if only 1 went, the errno of resending the
 *                            second, or "PARTIAL" if that resend succeeded
 *   tfo:ADDR:PORT            sendto(MSG_FASTOPEN) on a fresh TCP socket; EINPROGRESS
 *                            is waited for like tcp:
 *   tcp6-mapped:A.B.C.D:PORT, udp6-mapped-sendto:A.B.C.D:PORT
 *                            AF_INET6 socket to ::ffff:A.B.C.D
 *   raw4, raw6               socket(SOCK_RAW, IPPROTO_ICMP / IPPROTO_ICMPV6)
 *   ping4:ADDR, ping6:ADDR   ICMP datagram ("ping") socket, then sendto() of one
 *                            echo request; needs net.ipv4.ping_group_range to
 *                            include our gid in that netns (else EACCES)
 *   sctp:ADDR:PORT           socket(SOCK_STREAM, IPPROTO_SCTP), then connect like
 *                            tcp: (EPROTONOSUPPORT where the kernel lacks SCTP)
 *   loop:MS:MAXCOUNT:OP      repeats OP until MS ms passed, MAXCOUNT iterations, a
 *                            SIGTERM/SIGINT, or (with --until-stdin-eof) EOF on
 *                            stdin; prints {"op":"loop","inner":OP,"counts":{..},
 *                            "iterations":K,"elapsed_ms":T,"result":"done"}
 *   serve:PORT               TCP listener (accept and close at once) and UDP socket
 *                            (receive and discard) on [::]:PORT, dual-stack,
 *                            SO_REUSEADDR; PORT 0 lets the kernel choose one port
 *                            for both. Prints {"op":"serve","port":P,"result":"ready"}
 *   serve-lo:PORT            the same on 127.0.0.1:PORT and [::1]:PORT only
 *
 * serve ops run together in one poll loop after all other OPs, until
 * SIGTERM/SIGINT or EOF on stdin (stdin is watched when it is a pipe, socket
 * or terminal). With --report the servers print one line per connection or
 * datagram: {"event":"accept","proto":"tcp","port":80,"local":"192.0.2.1",
 * "peer":"192.0.2.1:40000"} or {"event":"recv","proto":"udp",...,"bytes":1}.
 */
#define _GNU_SOURCE
#include "join.h"

#include <netinet/icmp6.h>
#include <netinet/ip_icmp.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <time.h>

#define CONNECT_TIMEOUT_MS 2000
#define MAX_OPS 64
#define MAX_SERVE_FDS 64
#define MAX_COUNT_KEYS 64

enum kind {
  K_TCP,
  K_UDP_CONNECT,
  K_UDP_SENDTO,
  K_UDP_SENDMMSG,
  K_TFO,
  K_RAW4,
  K_RAW6,
  K_PING4,
  K_PING6,
  K_SCTP,
  K_LOOP,
  K_SERVE,
  K_SERVE_LO,
};

struct op {
  enum kind kind;
  const char *text;   /* the whole OP as given */
  const char *name;   /* printed as "op" */
  const char *target; /* printed as "target" (NULL: none) */
  struct sockaddr_storage addr;
  socklen_t addr_len;
  long long port, ms, max_count;
  struct op *inner; /* loop */
};

struct serve_fd {
  int fd;
  int tcp;
  int port;
};

static volatile sig_atomic_t stop_requested;
static int until_stdin_eof, report, announce;
static struct serve_fd serve_fds[MAX_SERVE_FDS];
static int n_serve_fds;

static void on_signal(int sig) {
  (void)sig;
  stop_requested = 1;
}

static void usage(const char *msg) {
  fprintf(stderr,
          "probe: %s\nusage: probe [--cgroup DIR] [--netns PATH] [--until-stdin-eof] [--report] [--announce] OP [OP...]\n"
          "  OP: tcp|udp-connect|udp-sendto|udp-sendmmsg|tfo|sctp:ADDR:PORT, tcp6-mapped|udp6-mapped-sendto:A.B.C.D:PORT,\n"
          "      raw4, raw6, ping4|ping6:ADDR, loop:MS:MAXCOUNT:OP, serve:PORT, serve-lo:PORT\n",
          msg);
  exit(EXIT_USAGE);
}

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- parsing ---- */

static int parse_op(const char *text, struct op *op, int nested);

static int parse_mapped(const char *s, struct op *op) {
  struct sockaddr_storage v4;
  socklen_t len;
  if (parse_target(s, &v4, &len) || v4.ss_family != AF_INET) return -1;
  struct sockaddr_in *s4 = (struct sockaddr_in *)&v4;
  struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&op->addr;
  memset(&op->addr, 0, sizeof op->addr);
  s6->sin6_family = AF_INET6;
  s6->sin6_port = s4->sin_port;
  s6->sin6_addr.s6_addr[10] = 0xff;
  s6->sin6_addr.s6_addr[11] = 0xff;
  memcpy(&s6->sin6_addr.s6_addr[12], &s4->sin_addr, 4);
  op->addr_len = sizeof *s6;
  return 0;
}

static int parse_op(const char *text, struct op *op, int nested) {
  memset(op, 0, sizeof *op);
  op->text = text;
  const char *colon = strchr(text, ':');
  size_t klen = colon ? (size_t)(colon - text) : strlen(text);
  const char *rest = colon ? colon + 1 : NULL;
  static const struct {
    const char *name;
    enum kind kind;
  } kinds[] = {
      {"tcp", K_TCP},         {"udp-connect", K_UDP_CONNECT},
      {"udp-sendto", K_UDP_SENDTO},
      {"udp-sendmmsg", K_UDP_SENDMMSG},
      {"tfo", K_TFO},         {"tcp6-mapped", K_TCP},
      {"udp6-mapped-sendto", K_UDP_SENDTO},
      {"raw4", K_RAW4},       {"raw6", K_RAW6},
      {"ping4", K_PING4},     {"ping6", K_PING6},
      {"sctp", K_SCTP},       {"loop", K_LOOP},
      {"serve", K_SERVE},     {"serve-lo", K_SERVE_LO},
  };
  int found = 0;
  for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
    if (strlen(kinds[i].name) == klen && strncmp(kinds[i].name, text, klen) == 0) {
      op->kind = kinds[i].kind;
      op->name = kinds[i].name;
      found = 1;
      break;
    }
  }
  if (!found) return -1;
  op->target = rest;
  int mapped = strncmp(op->name, "tcp6-mapped", 11) == 0 || strncmp(op->name, "udp6-mapped", 11) == 0;
  switch (op->kind) {
  case K_TCP:
  case K_UDP_CONNECT:
  case K_UDP_SENDTO:
  case K_UDP_SENDMMSG:
  case K_TFO:
  case K_SCTP:
    if (!rest) return -1;
    if (mapped) return parse_mapped(rest, op);
    return parse_target(rest, &op->addr, &op->addr_len);
  case K_RAW4:
  case K_RAW6:
    return rest ? -1 : 0;
  case K_PING4:
  case K_PING6:
    if (!rest || parse_addr(rest, 0, &op->addr, &op->addr_len)) return -1;
    return op->addr.ss_family == (op->kind == K_PING4 ? AF_INET : AF_INET6) ? 0 : -1;
  case K_LOOP: {
    if (nested || !rest) return -1;
    char buf[32];
    const char *p = rest;
    for (int field = 0; field < 2; field++) {
      const char *c = strchr(p, ':');
      if (!c || (size_t)(c - p) >= sizeof buf) return -1;
      memcpy(buf, p, (size_t)(c - p));
      buf[c - p] = '\0';
      /* MS: at most a day; MAXCOUNT: at most 10^12 */
      if (parse_num(buf, 0, field == 0 ? 86400000LL : 1000000000000LL, field == 0 ? &op->ms : &op->max_count))
        return -1;
      p = c + 1;
    }
    op->inner = calloc(1, sizeof *op->inner);
    if (!op->inner || parse_op(p, op->inner, 1)) return -1;
    if (op->inner->kind == K_SERVE || op->inner->kind == K_SERVE_LO) return -1;
    op->target = NULL;
    return 0;
  }
  case K_SERVE:
  case K_SERVE_LO:
    if (nested || !rest) return -1;
    op->target = NULL;
    return parse_num(rest, 0, 65535, &op->port);
  }
  return -1;
}

/* ---- client operations: each returns "ok" or an errno name ---- */

static void v6only_off(int fd, int family) {
  int off = 0;
  if (family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
}

/* Waits for a non-blocking connect to finish; returns 0 or an errno value. */
static int wait_connected(int fd) {
  long long deadline = now_ms() + CONNECT_TIMEOUT_MS;
  for (;;) {
    long long left = deadline - now_ms();
    if (left <= 0) return ETIMEDOUT;
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    int r = poll(&p, 1, (int)left);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return errno;
    if (r == 0) return ETIMEDOUT;
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) return errno;
    return err;
  }
}

static void close_abort(int fd) {
  struct linger lg = {.l_onoff = 1, .l_linger = 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  close(fd);
}

static const char *op_stream(const struct op *op, int proto, int fastopen) {
  int family = op->addr.ss_family;
  int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, proto);
  if (fd < 0) return errno_name(errno);
  v6only_off(fd, family);
  int r, err = 0;
  if (fastopen)
    r = (int)sendto(fd, "x", 1, MSG_FASTOPEN, (const struct sockaddr *)&op->addr, op->addr_len);
  else
    r = connect(fd, (const struct sockaddr *)&op->addr, op->addr_len);
  if (r < 0) err = errno == EINPROGRESS ? wait_connected(fd) : errno;
  close_abort(fd);
  return err ? errno_name(err) : "ok";
}

static const char *op_udp(const struct op *op, int connected) {
  int family = op->addr.ss_family;
  int fd = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno_name(errno);
  v6only_off(fd, family);
  int err = 0;
  if (connected) {
    if (connect(fd, (const struct sockaddr *)&op->addr, op->addr_len) < 0)
      err = errno;
    else if (send(fd, "x", 1, 0) < 0)
      err = errno;
  } else if (sendto(fd, "x", 1, 0, (const struct sockaddr *)&op->addr, op->addr_len) < 0) {
    err = errno;
  }
  close(fd);
  return err ? errno_name(err) : "ok";
}

static const char *op_sendmmsg(const struct op *op) {
  int family = op->addr.ss_family;
  int fd = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno_name(errno);
  v6only_off(fd, family);
  char data[2] = {'a', 'b'};
  struct iovec iov[2] = {{.iov_base = &data[0], .iov_len = 1}, {.iov_base = &data[1], .iov_len = 1}};
  struct mmsghdr msgs[2];
  memset(msgs, 0, sizeof msgs);
  for (int i = 0; i < 2; i++) {
    msgs[i].msg_hdr.msg_name = (void *)&op->addr;
    msgs[i].msg_hdr.msg_namelen = op->addr_len;
    msgs[i].msg_hdr.msg_iov = &iov[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
  }
  const char *result = "ok";
  int r = sendmmsg(fd, msgs, 2, 0);
  if (r < 0) {
    result = errno_name(errno);
  } else if (r < 2) {
    int r2 = sendmmsg(fd, &msgs[r], (unsigned)(2 - r), 0);
    result = r2 < 0 ? errno_name(errno) : "PARTIAL";
  }
  close(fd);
  return result;
}

static const char *op_raw(int family) {
  int fd = socket(family, SOCK_RAW | SOCK_CLOEXEC, family == AF_INET ? IPPROTO_ICMP : IPPROTO_ICMPV6);
  if (fd < 0) return errno_name(errno);
  close(fd);
  return "ok";
}

static const char *op_ping(const struct op *op) {
  int v4 = op->kind == K_PING4;
  int fd = socket(v4 ? AF_INET : AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, v4 ? IPPROTO_ICMP : IPPROTO_ICMPV6);
  if (fd < 0) return errno_name(errno);
  unsigned char pkt[16];
  memset(pkt, 0, sizeof pkt);
  /* Type, code, checksum, id, sequence: the kernel fills in id and checksum. */
  pkt[0] = v4 ? ICMP_ECHO : ICMP6_ECHO_REQUEST;
  pkt[7] = 1;
  memcpy(pkt + 8, "egressd!", 8);
  int err = 0;
  if (sendto(fd, pkt, sizeof pkt, 0, (const struct sockaddr *)&op->addr, op->addr_len) < 0) err = errno;
  close(fd);
  return err ? errno_name(err) : "ok";
}

static const char *run_client(const struct op *op) {
  switch (op->kind) {
  case K_TCP:
    return op_stream(op, 0, 0);
  case K_TFO:
    return op_stream(op, 0, 1);
  case K_SCTP:
    return op_stream(op, IPPROTO_SCTP, 0);
  case K_UDP_CONNECT:
    return op_udp(op, 1);
  case K_UDP_SENDTO:
    return op_udp(op, 0);
  case K_UDP_SENDMMSG:
    return op_sendmmsg(op);
  case K_RAW4:
    return op_raw(AF_INET);
  case K_RAW6:
    return op_raw(AF_INET6);
  case K_PING4:
  case K_PING6:
    return op_ping(op);
  default:
    return "EINVAL";
  }
}

/* ---- output ---- */

static void print_result(const struct op *op, const char *result) {
  printf("{\"op\":");
  json_str(stdout, op->name);
  if (op->target) {
    printf(",\"target\":");
    json_str(stdout, op->target);
  }
  printf(",\"result\":");
  json_str(stdout, result);
  printf("}\n");
  fflush(stdout);
}

/* 1 when stdin should end loops/servers at EOF: a pipe, a socket or a terminal. */
static int stdin_watchable(void) {
  struct stat st;
  if (fstat(0, &st) < 0) return 0;
  return S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode) || isatty(0);
}

/* Non-blocking check: 1 if stdin reached EOF (or is gone); data is discarded. */
static int stdin_eof(void) {
  struct pollfd p = {.fd = 0, .events = POLLIN};
  if (poll(&p, 1, 0) <= 0) return 0;
  if (p.revents & POLLNVAL) return 1;
  char buf[256];
  ssize_t n = read(0, buf, sizeof buf);
  return n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN);
}

/* ---- loop ---- */

static void run_loop(const struct op *op) {
  struct {
    const char *name;
    long long n;
  } counts[MAX_COUNT_KEYS];
  int n_keys = 0;
  long long iterations = 0, start = now_ms(), last_stdin_check = start;
  int watch_stdin = until_stdin_eof && stdin_watchable();
  while (iterations < op->max_count && !stop_requested) {
    long long t = now_ms();
    if (t - start >= op->ms) break;
    if (watch_stdin && t - last_stdin_check >= 5) {
      last_stdin_check = t;
      if (stdin_eof()) break;
    }
    const char *r = run_client(op->inner);
    iterations++;
    int k = 0;
    while (k < n_keys && strcmp(counts[k].name, r) != 0) k++;
    if (k == n_keys && n_keys < MAX_COUNT_KEYS) counts[n_keys++] = (typeof(counts[0])){.name = r, .n = 0};
    if (k < n_keys) counts[k].n++;
  }
  printf("{\"op\":\"loop\",\"inner\":");
  json_str(stdout, op->inner->text);
  printf(",\"counts\":{");
  for (int k = 0; k < n_keys; k++) {
    if (k) putchar(',');
    json_str(stdout, counts[k].name);
    printf(":%lld", counts[k].n);
  }
  printf("},\"iterations\":%lld,\"elapsed_ms\":%lld,\"result\":\"done\"}\n", iterations, now_ms() - start);
  fflush(stdout);
}

/* ---- servers ---- */

static int open_server(int family, const char *addr, int port, int tcp, int *err) {
  struct sockaddr_storage ss;
  socklen_t len = 0;
  parse_addr(addr, port, &ss, &len);
  int fd = socket(family, (tcp ? SOCK_STREAM : SOCK_DGRAM) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *err = errno;
    return -1;
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (family == AF_INET6) {
    v6only_off(fd, family);
    if (!tcp) setsockopt(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &one, sizeof one);
  }
  if (!tcp) setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &one, sizeof one);
  if (bind(fd, (struct sockaddr *)&ss, len) < 0 || (tcp && listen(fd, 4096) < 0)) {
    *err = errno;
    close(fd);
    return -1;
  }
  return fd;
}

static int bound_port(int fd) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0) return -1;
  return ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                       : ((struct sockaddr_in6 *)&ss)->sin6_port);
}

/*
 * Opens the sockets of a serve op: TCP and UDP on each address with one port
 * (port 0: the kernel picks it for the first socket; retried a few times when
 * a later socket finds it taken). Returns the port, or -errno.
 */
static int start_serve(const struct op *op) {
  static const struct {
    int family;
    const char *addr;
  } any[] = {{AF_INET6, "::"}}, lo[] = {{AF_INET, "127.0.0.1"}, {AF_INET6, "::1"}};
  const typeof(any[0]) *addrs = op->kind == K_SERVE ? any : lo;
  int n_addrs = op->kind == K_SERVE ? 1 : 2;
  if (n_serve_fds + 2 * n_addrs > MAX_SERVE_FDS) return -EMFILE;
  int err = 0;
  for (int attempt = 0; attempt < (op->port ? 1 : 20); attempt++) {
    int port = (int)op->port, n = 0, fds[4];
    for (int a = 0; a < n_addrs; a++) {
      for (int tcp = 1; tcp >= 0; tcp--) {
        int fd = open_server(addrs[a].family, addrs[a].addr, port, tcp, &err);
        if (fd < 0) break;
        fds[n++] = fd;
        if (port == 0) port = bound_port(fd);
      }
      if (n != 2 * (a + 1)) break;
    }
    if (n == 2 * n_addrs) {
      for (int i = 0; i < n; i++)
        serve_fds[n_serve_fds++] = (struct serve_fd){.fd = fds[i], .tcp = i % 2 == 0, .port = port};
      return port;
    }
    for (int i = 0; i < n; i++) close(fds[i]);
    if (err != EADDRINUSE) break;
  }
  return -err;
}

/* "192.0.2.1" (IPv4-mapped shown as IPv4) or "2001:db8::1"; with the port: "a:p" / "[a]:p". */
static void format_addr(const struct sockaddr_storage *ss, int with_port, char *out, size_t size) {
  char a[INET6_ADDRSTRLEN] = "?";
  int port = 0, v6 = 0;
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;
    inet_ntop(AF_INET, &s4->sin_addr, a, sizeof a);
    port = ntohs(s4->sin_port);
  } else if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
    if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
      inet_ntop(AF_INET, &s6->sin6_addr.s6_addr[12], a, sizeof a);
    } else {
      inet_ntop(AF_INET6, &s6->sin6_addr, a, sizeof a);
      v6 = 1;
    }
    port = ntohs(s6->sin6_port);
  }
  if (!with_port)
    snprintf(out, size, "%s", a);
  else
    snprintf(out, size, v6 ? "[%s]:%d" : "%s:%d", a, port);
}

/*
 * Event lines go straight to fd 1, which serve_loop() makes non-blocking: a
 * reader that falls behind loses events (counted in `dropped_events`) but
 * never stalls the servers. Each line is shorter than PIPE_BUF, so it is
 * written whole or not at all.
 */
static long long dropped_events;

static void print_event(const char *event, const char *proto, int port, const char *local, const char *peer,
                        long bytes) {
  char line[512], b[32] = "";
  if (bytes >= 0) snprintf(b, sizeof b, ",\"bytes\":%ld", bytes);
  /* local and peer are address text from inet_ntop: nothing to escape */
  int n = snprintf(line, sizeof line, "{\"event\":\"%s\",\"proto\":\"%s\",\"port\":%d,\"local\":\"%s\",\"peer\":\"%s\"%s}\n",
                   event, proto, port, local, peer, b);
  if (n <= 0 || n >= (int)sizeof line || write(1, line, (size_t)n) != n) dropped_events++;
}

static void serve_tcp(const struct serve_fd *s) {
  for (int i = 0; i < 64; i++) {
    struct sockaddr_storage peer, local;
    socklen_t plen = sizeof peer, llen = sizeof local;
    int c = accept4(s->fd, (struct sockaddr *)&peer, &plen, SOCK_CLOEXEC);
    if (c < 0) return;
    if (report) {
      char l[64], p[80];
      if (getsockname(c, (struct sockaddr *)&local, &llen) < 0) local.ss_family = AF_UNSPEC;
      format_addr(&local, 0, l, sizeof l);
      format_addr(&peer, 1, p, sizeof p);
      print_event("accept", "tcp", s->port, l, p, -1);
    }
    close(c);
  }
}

static void serve_udp(const struct serve_fd *s) {
  for (int i = 0; i < 64; i++) {
    char buf[2048], cbuf[256];
    struct sockaddr_storage peer;
    struct iovec iov = {.iov_base = buf, .iov_len = sizeof buf};
    struct msghdr msg = {.msg_name = &peer,
                         .msg_namelen = sizeof peer,
                         .msg_iov = &iov,
                         .msg_iovlen = 1,
                         .msg_control = cbuf,
                         .msg_controllen = sizeof cbuf};
    ssize_t n = recvmsg(s->fd, &msg, 0);
    if (n < 0) return;
    if (!report) continue;
    struct sockaddr_storage local;
    memset(&local, 0, sizeof local);
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
        struct in_pktinfo pi;
        memcpy(&pi, CMSG_DATA(c), sizeof pi);
        local.ss_family = AF_INET;
        ((struct sockaddr_in *)&local)->sin_addr = pi.ipi_addr;
      } else if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO) {
        struct in6_pktinfo pi;
        memcpy(&pi, CMSG_DATA(c), sizeof pi);
        local.ss_family = AF_INET6;
        ((struct sockaddr_in6 *)&local)->sin6_addr = pi.ipi6_addr;
      }
    }
    char l[64], p[80];
    format_addr(&local, 0, l, sizeof l);
    format_addr(&peer, 1, p, sizeof p);
    print_event("recv", "udp", s->port, l, p, (long)n);
  }
}

static void serve_loop(void) {
  struct pollfd pfds[MAX_SERVE_FDS + 1];
  int watch_stdin = stdin_watchable();
  fflush(stdout);
  if (report) fcntl(1, F_SETFL, fcntl(1, F_GETFL) | O_NONBLOCK);
  while (!stop_requested) {
    int n = 0;
    for (int i = 0; i < n_serve_fds; i++) pfds[n++] = (struct pollfd){.fd = serve_fds[i].fd, .events = POLLIN};
    if (watch_stdin) pfds[n++] = (struct pollfd){.fd = 0, .events = POLLIN};
    int r = poll(pfds, (nfds_t)n, 1000);
    if (r < 0 && errno != EINTR) {
      fprintf(stderr, "probe: poll: %s\n", strerror(errno));
      return;
    }
    if (r <= 0) continue;
    for (int i = 0; i < n_serve_fds; i++) {
      if (!pfds[i].revents) continue;
      if (serve_fds[i].tcp)
        serve_tcp(&serve_fds[i]);
      else
        serve_udp(&serve_fds[i]);
    }
    if (watch_stdin && pfds[n - 1].revents && stdin_eof()) return;
  }
}

int main(int argc, char **argv) {
  const char *cgroup = NULL, *netns = NULL;
  int i = 1;
  for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
    if (strcmp(argv[i], "--cgroup") == 0 && i + 1 < argc)
      cgroup = argv[++i];
    else if (strcmp(argv[i], "--netns") == 0 && i + 1 < argc)
      netns = argv[++i];
    else if (strcmp(argv[i], "--until-stdin-eof") == 0)
      until_stdin_eof = 1;
    else if (strcmp(argv[i], "--report") == 0)
      report = 1;
    else if (strcmp(argv[i], "--announce") == 0)
      announce = 1;
    else
      usage("unknown option or missing argument");
  }
  if (i >= argc) usage("no OP given");
  if (argc - i > MAX_OPS) usage("too many OPs");
  static struct op ops[MAX_OPS];
  int n_ops = 0;
  for (; i < argc; i++) {
    if (parse_op(argv[i], &ops[n_ops], 0)) {
      fprintf(stderr, "probe: cannot parse OP \"%s\"\n", argv[i]);
      usage("bad OP");
    }
    n_ops++;
  }

  struct sigaction sa = {.sa_handler = on_signal};
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);

  if (cgroup && join_cgroup(cgroup)) return EXIT_JOIN;
  if (netns && join_netns(netns)) return EXIT_JOIN;
  if (announce) {
    printf("{\"op\":\"joined\",\"pid\":%d,\"result\":\"ok\"}\n", (int)getpid());
    fflush(stdout);
  }

  for (int k = 0; k < n_ops; k++) {
    struct op *op = &ops[k];
    if (op->kind == K_LOOP) {
      run_loop(op);
    } else if (op->kind == K_SERVE || op->kind == K_SERVE_LO) {
      int port = start_serve(op);
      printf("{\"op\":\"%s\",\"port\":%d,\"result\":", op->name, port < 0 ? (int)op->port : port);
      json_str(stdout, port < 0 ? errno_name(-port) : "ready");
      printf("}\n");
      fflush(stdout);
    } else {
      print_result(op, run_client(op));
    }
  }
  if (n_serve_fds) serve_loop();
  return 0;
}
