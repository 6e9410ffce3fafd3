/* Times commands interleaved: each round runs A, B, C ... once, in turn, so
 * the drift of this VM (a third between minutes) falls on all of them alike.
 * Prints one line per round: the wall-clock nanoseconds of each command,
 * tab-separated. Usage: pairs ROUNDS WARMUP ::: CMD_A... ::: CMD_B... [::: ...]
 * (`:::`, not `--`, separates them: the commands themselves use `--`).
 * Each command's stdout goes to /dev/null, stdin from /dev/null; a command
 * that fails ends the run with status 1, unless PAIRS_ANY_STATUS is set (a
 * command whose status is an answer, as `lcrun explain`'s 1 for a miss). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long run(char **argv) {
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0);
        dup2(null, 1);
        execvp(argv[0], argv);
        _exit(127);
    }
    int status;
    if (pid < 0 || waitpid(pid, &status, 0) < 0) return -1;
    clock_gettime(CLOCK_MONOTONIC, &b);
    if (!WIFEXITED(status) || (WEXITSTATUS(status) != 0 && !getenv("PAIRS_ANY_STATUS"))) {
        fprintf(stderr, "pairs: %s failed (status %d)\n", argv[0], status);
        return -1;
    }
    return (b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec);
}

int main(int argc, char **argv) {
    if (argc < 5 || strcmp(argv[3], ":::") != 0) {
        fprintf(stderr, "usage: pairs ROUNDS WARMUP ::: CMD... ::: CMD...\n");
        return 2;
    }
    int rounds = atoi(argv[1]), warmup = atoi(argv[2]);
    char **cmds[16];
    int n = 0;
    for (int i = 3; i < argc && n < 16; i++) {
        if (strcmp(argv[i], ":::") == 0) {
            argv[i] = NULL;
            cmds[n++] = &argv[i + 1];
        }
    }
    for (int r = -warmup; r < rounds; r++) {
        for (int c = 0; c < n; c++) {
            long long ns = run(cmds[c]);
            if (ns < 0) return 1;
            if (r >= 0) printf("%s%lld", c ? "\t" : "", ns);
        }
        if (r >= 0) printf("\n");
    }
    return 0;
}
