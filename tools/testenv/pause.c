/* The pod sandbox's process (what registry.k8s.io/pause is): holds the pod's namespaces,
 * reaps zombies, ends on SIGINT or SIGTERM. Built statically by tools/testenv/node.sh. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }
static void reap(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {}
}

int main(void) {
  struct sigaction a = {0}, b = {0};
  a.sa_handler = stop;
  sigaction(SIGINT, &a, NULL);
  sigaction(SIGTERM, &a, NULL);
  b.sa_handler = reap;
  b.sa_flags = SA_NOCLDSTOP;
  sigaction(SIGCHLD, &b, NULL);
  for (;;) pause();
}
