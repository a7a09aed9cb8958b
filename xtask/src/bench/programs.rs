//! The C programs of the bench, written to its work directory and compiled
//! with `cc -O2` in every run: the child every supervisor runs (`stamp`),
//! the floor (`floor`), the least a supervisor can do, the floor of a watch
//! scan (`scan`) and the process a watch's trigger fires at (`hog`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The child. Its first action reads CLOCK_MONOTONIC; it appends
/// `PID NS\n` to the file named by its argument (or `BENCH_STAMPS`, for
/// supervisors that run `./run` without arguments) in one `O_APPEND` write,
/// then sleeps until killed.
const STAMP_C: &str = r#"#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    const char *path = argc > 1 ? argv[1] : getenv("BENCH_STAMPS");
    if (path) {
        char line[64];
        int n = snprintf(line, sizeof line, "%d %lld\n", (int)getpid(),
                         (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
        int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (fd >= 0) {
            if (write(fd, line, n) != n) return 1;
            close(fd);
        }
    }
    for (;;) pause();
}
"#;

/// The floor: keeps N children of PROGRAM alive with fork/exec/waitpid and
/// starts each one again the moment it dies (delay 0), nothing else.
const FLOOR_C: &str = r#"/* floor N PROGRAM [ARG...]: the least a supervisor can do. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static char **child_argv;

static pid_t start(void) {
    pid_t pid = fork();
    if (pid == 0) {
        execv(child_argv[0], child_argv);
        _exit(127);
    }
    if (pid < 0) perror("floor: fork");
    return pid;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: floor N PROGRAM [ARG...]\n");
        return 2;
    }
    int n = atoi(argv[1]);
    if (n < 1) return 2;
    child_argv = argv + 2;
    pid_t *kids = calloc((size_t)n, sizeof *kids);
    if (!kids) return 1;
    for (int i = 0; i < n; i++) kids[i] = start();
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, 0);
        if (pid < 0) {
            if (errno == EINTR) continue;
            perror("floor: waitpid");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            if (kids[i] == pid) {
                kids[i] = start();
                break;
            }
        }
    }
}
"#;

/// The floor of a thread-per-child re-exec: `rethread N SAMPLES` makes N
/// threads, each waiting in `poll` on 64 KiB of a stack region mapped once
/// (as Sentry's monitors do), then execs itself, makes them again and
/// prints how long that took from just before the `execve`, in ms; SAMPLES
/// times over. What no supervisor with a thread per child can avoid in a
/// reload: the kernel ending N threads in the `execve`, a new image, N
/// threads made again — without state to carry or children to adopt.
const RETHREAD_C: &str = r#"/* rethread N SAMPLES [T0]: the floor of a thread-per-child re-exec. */
#define _GNU_SOURCE
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define STACK (64 * 1024)

static int bell;

static void *watch(void *arg) {
    struct pollfd p = { bell, POLLIN, 0 };
    for (;;) poll(&p, 1, -1);
    return arg;
}

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: rethread N SAMPLES\n");
        return 2;
    }
    int n = atoi(argv[1]), left = atoi(argv[2]);
    long long t0 = argc > 3 ? atoll(argv[3]) : 0;
    bell = eventfd(0, EFD_CLOEXEC);
    char *stacks = mmap(0, (size_t)n * STACK, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (bell < 0 || stacks == MAP_FAILED) return 1;
    for (int i = 0; i < n; i++) {
        pthread_attr_t a;
        pthread_t t;
        pthread_attr_init(&a);
        pthread_attr_setstack(&a, stacks + (size_t)i * STACK, STACK);
        if (pthread_create(&t, &a, watch, 0)) return 1;
        pthread_attr_destroy(&a);
    }
    if (t0) {
        printf("%.3f\n", (now_ns() - t0) / 1e6);
        fflush(stdout);
    }
    if (left <= 0) return 0;
    char nb[16], lb[16], tb[32];
    snprintf(nb, sizeof nb, "%d", n);
    snprintf(lb, sizeof lb, "%d", left - 1);
    snprintf(tb, sizeof tb, "%lld", now_ns());
    char *args[] = { argv[0], nb, lb, tb, 0 };
    execv("/proc/self/exe", args);
    perror("rethread: execv");
    return 1;
}
"#;

/// The floor of a watch scan: `scan N` reads `/proc/PID/stat` of every
/// process N times over and prints the CPU time (user + system) one pass
/// took, in microseconds — the least a scan by command line and memory can do.
const SCAN_C: &str = r#"#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 10;
    long seen = 0;
    char path[64], buf[1024];
    for (int i = 0; i < n; i++) {
        DIR *d = opendir("/proc");
        if (!d) return 1;
        struct dirent *e;
        while ((e = readdir(d))) {
            if (!isdigit((unsigned char)e->d_name[0])) continue;
            snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd < 0) continue;
            if (read(fd, buf, sizeof buf) > 0) seen++;
            close(fd);
        }
        closedir(d);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double us = ru.ru_utime.tv_sec * 1e6 + ru.ru_utime.tv_usec + ru.ru_stime.tv_sec * 1e6 + ru.ru_stime.tv_usec;
    printf("%.1f %ld\n", us / n, seen / n);
    return 0;
}
"#;

/// The watched process of the trigger latency: `hog FILE TAG` stays below
/// 32 MiB resident for 300 ms, then grows to about 49 MiB, appending
/// `crossed NS` (CLOCK_MONOTONIC) to FILE the moment it passes 32 MiB; on
/// SIGTERM it appends `signalled NS` and exits. TAG is only there for the
/// watch's regex.
const HOG_C: &str = r#"#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static int out = -1;

static void stamp(const char *what) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    char line[64];
    int n = snprintf(line, sizeof line, "%s %lld\n", what, (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
    if (write(out, line, n) != n) _exit(1);
}

static void on_term(int sig) {
    (void)sig;
    stamp("signalled");
    _exit(0);
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    out = open(argv[1], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (out < 0) return 1;
    signal(SIGTERM, on_term);
    /* Resident now (statm's second field, pages), then 24 MiB more: below
       the watch's 32 MiB, long enough for a scan to see it there. */
    long page = sysconf(_SC_PAGESIZE), resident = 0;
    FILE *statm = fopen("/proc/self/statm", "r");
    if (!statm || fscanf(statm, "%*s %ld", &resident) != 1) return 1;
    fclose(statm);
    size_t size = 48u << 20, below = 24u << 20, limit = 32u << 20;
    volatile char *p = malloc(size);
    if (!p) return 1;
    size_t i = 0;
    for (; i < below; i += page) p[i] = 1;
    usleep(300000);
    /* Then on, page by page, stamping the moment the total passes 32 MiB. */
    int crossed = 0;
    for (; i < size; i += page) {
        p[i] = 1;
        if (!crossed && (size_t)resident * page + i + page > limit) {
            stamp("crossed");
            crossed = 1;
        }
    }
    for (;;) pause();
}
"#;

/// The compiled programs.
pub struct Programs {
    pub stamp: PathBuf,
    pub floor: PathBuf,
    pub scan: PathBuf,
    pub hog: PathBuf,
    pub rethread: PathBuf,
    /// Whether `stamp` is linked statically (no dynamic loader before its stamp).
    pub static_stamp: bool,
}

/// Writes the sources into `dir` and compiles them with `cc -O2`
/// (statically where the C library allows it, else dynamically).
pub fn build(dir: &Path) -> Result<Programs, String> {
    let (stamp, static_stamp) = compile(dir, "stamp", STAMP_C)?;
    let (floor, _) = compile(dir, "floor", FLOOR_C)?;
    let (scan, _) = compile(dir, "scan", SCAN_C)?;
    let (hog, _) = compile(dir, "hog", HOG_C)?;
    let (rethread, _) = compile(dir, "rethread", RETHREAD_C)?;
    Ok(Programs { stamp, floor, scan, hog, rethread, static_stamp })
}

fn compile(dir: &Path, name: &str, source: &str) -> Result<(PathBuf, bool), String> {
    let src = dir.join(format!("{name}.c"));
    let out = dir.join(name);
    fs::write(&src, source).map_err(|e| format!("cannot write {}: {e}", src.display()))?;
    let mut last = String::new();
    for statically in [true, false] {
        let mut cmd = Command::new("cc");
        cmd.arg("-O2").arg("-Wall").arg("-o").arg(&out).arg(&src);
        if statically {
            cmd.arg("-static");
        }
        let run = cmd.stdin(Stdio::null()).output().map_err(|e| format!("cannot run cc: {e}"))?;
        if run.status.success() {
            return Ok((out, statically));
        }
        last = String::from_utf8_lossy(&run.stderr).into_owned();
    }
    Err(format!("cc -O2 {} failed:\n{last}", src.display()))
}
