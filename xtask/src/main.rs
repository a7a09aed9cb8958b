//! `cargo xtask …`: development chores for this workspace (scaffolding,
//! benchmarks, soak tests). Placeholder: the chores arrive with their issues.

fn main() {
    eprintln!("usage: cargo xtask COMMAND (no commands yet)");
    std::process::exit(64);
}
