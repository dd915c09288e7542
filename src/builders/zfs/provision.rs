//! The provisioning script and the smoke test, run on the ZFS host as POSIX
//! `sh` scripts (locally or over the build's ssh connection).
//!
//! The recipe is written to a `mktemp -d` directory on the host and run:
//! on Linux in a fresh PID namespace (`unshare --pid --fork --kill-child`:
//! when it ends, the kernel kills everything it left, even daemons that
//! setsid), as the build user through `runuser`; elsewhere as the build
//! user through `sudo -n -u` (macOS). Afterwards everything it started is
//! killed: its process tree, the build user's processes (macOS), the jail
//! it made (FreeBSD, `KILN_JAIL`). A watchdog reads the script's stdin,
//! which Kiln holds open: end-of-file means Kiln or the connection is gone,
//! and the host then kills the recipe, removes the temp directory and
//! destroys the tree under construction by itself, since nobody else will.
//!
//! The script reports the recipe's exit status on its last stderr line
//! (`kiln-provision-exit: N`): without it, the host or the connection
//! failed (infrastructure), not the recipe.

use std::collections::BTreeMap;
use std::path::Path;

use super::build::{Runner, ZfsSpec};
use super::host::shell_quote;

/// The marker line carrying the recipe's exit status.
pub const EXIT_MARKER: &str = "kiln-provision-exit: ";

/// What the host's shell does around the recipe (see the module doc).
const WRAPPER: &str = r#"set -u
exec 3<&0 0</dev/null
os=$(uname -s)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/kiln-provision.XXXXXX") || exit 70
script="$tmp/$KILN_LEAF.provision.sh"
kiln_write_recipe > "$script" || exit 70
chmod 755 "$tmp"
chmod 644 "$script"
# Every descendant of a process, deepest last (ps -A -o pid= -o ppid= is
# POSIX: Linux, macOS and FreeBSD have it).
kiln_tree() {
    kids=$(ps -A -o pid= -o ppid= | awk -v p="$1" '$2 == p { print $1 }')
    for k in $kids; do kiln_tree "$k"; done
    echo "$1"
}
kiln_kill_tree() {
    for p in $(kiln_tree "$1"); do kill -9 "$p" 2>/dev/null; done
}
kiln_reap() {
    kiln_kill_tree "$pid"
    case $os in
    Darwin) [ -n "$KILN_USER" ] && pkill -9 -U "$KILN_USER" 2>/dev/null ;;
    FreeBSD)
        jls -j "$KILN_JAIL" >/dev/null 2>&1 && jail -r "$KILN_JAIL" >/dev/null 2>&1
        [ -n "${ROOTFS:-}" ] && umount -f "$ROOTFS/dev" >/dev/null 2>&1 ;;
    esac
    rm -rf "$tmp"
}
kiln_abandon() {
    kiln_reap
    i=0
    while [ "$i" -lt 30 ] && zfs list -H -o name "$KILN_DATASET" >/dev/null 2>&1; do
        zfs destroy -r -f "$KILN_DATASET" >/dev/null 2>&1 || sleep 1
        i=$((i + 1))
    done
}
if [ "$os" = Linux ] && command -v unshare >/dev/null 2>&1; then
    set -- unshare --pid --fork --kill-child
else
    set --
fi
if [ -n "$KILN_USER" ]; then
    if [ "$os" = Linux ]; then
        set -- "$@" runuser -u "$KILN_USER" --
    else
        set -- "$@" sudo -n -H -u "$KILN_USER"
    fi
fi
kiln_run "$@" 3<&- &
pid=$!
# The watchdog outlives the session: a hangup (sudo's pty closing with the
# connection) or a broken pipe must not stop it before it has cleaned up.
( trap '' HUP PIPE INT TERM; cat <&3 >/dev/null 2>&1; kiln_abandon ) >/dev/null 2>&1 &
watch=$!
wait "$pid"
rc=$?
kiln_kill_tree "$watch"
kiln_reap
echo "kiln-provision-exit: $rc" >&2
exit "$rc"
"#;

/// `export` lines for the environment, and the same as `env` arguments.
fn environment(env: &BTreeMap<String, String>) -> (String, String) {
    let mut exports = String::new();
    let mut args = String::new();
    for (k, v) in env {
        exports.push_str(&format!("export {k}={}\n", shell_quote(v)));
        args.push(' ');
        args.push_str(&shell_quote(&format!("{k}={v}")));
    }
    (exports, args)
}

/// A here-document delimiter that does not occur in `text`.
fn delimiter(text: &str) -> String {
    let mut n = 0u32;
    loop {
        let d = format!("KILN_RECIPE_END_{n}");
        if !text.lines().any(|l| l == d) {
            return d;
        }
        n += 1;
    }
}

/// The whole script for provisioning `spec`.
pub fn provision_script(spec: &ZfsSpec) -> String {
    let (exports, env_args) = environment(&spec.env);
    let leaf = spec.dataset.rsplit('/').next().unwrap_or("tree");
    let end = delimiter(&spec.script);
    let script = spec.script.trim_end_matches('\n');
    format!(
        "KILN_DATASET={dataset}\nKILN_LEAF={leaf}\nKILN_USER={user}\nexport KILN_JAIL={jail}\n{exports}\
         kiln_write_recipe() {{\ncat <<'{end}'\n{script}\n{end}\n}}\n\
         kiln_run() {{\n\"$@\" env{env_args} sh \"$script\"\n}}\n{WRAPPER}",
        dataset = shell_quote(&spec.dataset),
        leaf = shell_quote(leaf),
        user = shell_quote(spec.user.as_deref().unwrap_or("")),
        jail = shell_quote(&jail_name(leaf)),
    )
}

/// The jail a FreeBSD recipe creates and Kiln removes (`KILN_JAIL`).
pub fn jail_name(leaf: &str) -> String {
    let id = leaf.rsplit('-').next().unwrap_or(leaf);
    format!("kiln-{id}")
}

/// The script running `command` through the profile, as the job will: as
/// the build user on the host, or inside the jail (FreeBSD).
pub fn smoke_script(spec: &ZfsSpec, command: &str) -> String {
    let (exports, env_args) = environment(&spec.env);
    let line = |profile: &Path| {
        format!(
            ". {}; {command}",
            shell_quote(&profile.display().to_string())
        )
    };
    let run = match &spec.runner {
        Runner::Host => {
            let line = shell_quote(&line(&spec.profile));
            match &spec.user {
                Some(u) => format!(
                    "if [ \"$(uname -s)\" = Linux ]; then\n  runuser -u {u} -- env{env_args} sh -c {line} 2>&1\nelse\n  sudo -n -H -u {u} env{env_args} sh -c {line} 2>&1\nfi",
                    u = shell_quote(u)
                ),
                None => format!("sh -c {line} 2>&1"),
            }
        }
        Runner::Jail { root, user } => {
            let inside = spec
                .profile
                .strip_prefix(root)
                .map(|p| Path::new("/").join(p))
                .unwrap_or_else(|_| spec.profile.clone());
            let leaf = spec.dataset.rsplit('/').next().unwrap_or("tree");
            format!(
                "jail -c name={jail}-smoke path={root} host=inherit ip4=inherit ip6=inherit mount.devfs exec.clean exec.jail_user={user} command=/bin/sh -c {line} 2>&1\nrc=$?\numount -f {root}/dev >/dev/null 2>&1\n(exit \"$rc\")",
                jail = jail_name(leaf),
                root = shell_quote(&root.display().to_string()),
                user = shell_quote(user),
                line = shell_quote(&line(&inside)),
            )
        }
    };
    format!("{exports}exec 0</dev/null\n{run}\nexit $?")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delimiter_never_ends_the_recipe_early() {
        assert_eq!(delimiter("echo hi"), "KILN_RECIPE_END_0");
        assert_eq!(
            delimiter("KILN_RECIPE_END_0\nKILN_RECIPE_END_1"),
            "KILN_RECIPE_END_2"
        );
    }
}
