//! The two C programs of the bench, written to its work directory and
//! compiled with `cc -O2` in every run: the child every supervisor runs
//! (`stamp`) and the floor (`floor`), the least a supervisor can do.

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

/// The compiled programs.
pub struct Programs {
    pub stamp: PathBuf,
    pub floor: PathBuf,
    /// Whether `stamp` is linked statically (no dynamic loader before its stamp).
    pub static_stamp: bool,
}

/// Writes both sources into `dir` and compiles them with `cc -O2`
/// (statically where the C library allows it, else dynamically).
pub fn build(dir: &Path) -> Result<Programs, String> {
    let (stamp, static_stamp) = compile(dir, "stamp", STAMP_C)?;
    let (floor, _) = compile(dir, "floor", FLOOR_C)?;
    Ok(Programs { stamp, floor, static_stamp })
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
