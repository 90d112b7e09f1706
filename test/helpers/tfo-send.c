/*
 * tfo-send: TCP Fast Open's way around a check of a connection's first
 * sends (test/privileged/names.test.ts): the bytes go with the SYN, from
 * sendto(MSG_FASTOPEN), and are sent again from the socket's queue after the
 * handshake, never through a later send().
 *
 *   tfo-send ADDR PORT HEX
 *
 * Prints {"send":"ok"|ERRNO,"echoed":N}: N bytes of the world's echo server
 * came back within 2 s. IPv4 only.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: tfo-send ADDR PORT HEX\n");
    return 2;
  }
  size_t hexlen = strlen(argv[3]);
  size_t n = hexlen / 2;
  unsigned char *data = malloc(n + 1);
  for (size_t i = 0; i < n; i++) sscanf(argv[3] + 2 * i, "%2hhx", &data[i]);
  struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[2]))};
  if (inet_pton(AF_INET, argv[1], &to.sin_addr) != 1) {
    fprintf(stderr, "tfo-send: not an IPv4 address: %s\n", argv[1]);
    return 2;
  }
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) {
    printf("{\"send\":\"%s\",\"echoed\":0}\n", strerrorname_np(errno));
    return 0;
  }
  const char *sent = "ok";
  if (sendto(fd, data, n, MSG_FASTOPEN, (struct sockaddr *)&to, sizeof to) < 0) sent = strerrorname_np(errno);
  size_t echoed = 0;
  long long deadline = now_ms() + 2000;
  unsigned char buf[65536];
  while (echoed < n && now_ms() < deadline) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, (int)(deadline - now_ms())) <= 0) break;
    ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (r <= 0) break;
    echoed += (size_t)r;
  }
  printf("{\"send\":\"%s\",\"echoed\":%zu}\n", sent, echoed);
  close(fd);
  return 0;
}
