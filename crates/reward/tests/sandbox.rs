//! The sandbox (docs/DESIGN.md §3.7) contains hostile programs, the host is unchanged afterwards
//! and the caller stays alive. Run as root (as CI does) these exercise run-uid isolation, and two of
//! them re-run this binary as `nobody` to exercise user-namespace isolation and the refusal of
//! run-uid isolation without root. Without root they are skipped with a note, or fail when `CI` is
//! set.

use aha_reward::code::harness::run_tests;
use aha_reward::code::sandbox::{live_processes_of, run_python, Isolation, Limits, RunOutput, Status};
use std::time::Duration;

fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        assert!(std::env::var_os("CI").is_none(), "sandbox tests need root in CI");
        eprintln!("note: skipping sandbox test (needs root)");
    }
    root
}

fn limits(wall_s: u64) -> Limits {
    Limits { wall: Duration::from_secs(wall_s), cpu_s: wall_s, ..Limits::default() }
}

fn run(src: &str) -> RunOutput {
    let out = run_python(src, &[], b"", &limits(5));
    assert_ne!(out.status, Status::Refused, "refused: {:?}", out.refused);
    if let Some(uid) = out.uid {
        assert!(live_processes_of(uid).is_empty(), "processes of uid {uid} survived");
    }
    out
}

#[test]
fn trivial_program_runs() {
    if !can_run() {
        return;
    }
    let out = run_python("import sys\nprint(sys.stdin.read().upper())", &[], b"hi", &limits(5));
    assert_eq!(out.status, Status::Ok, "{out:?}");
    assert_eq!(out.stdout.trim(), "HI");
}

#[test]
fn infinite_loop_and_sleep_time_out() {
    if !can_run() {
        return;
    }
    for src in ["while True: pass", "import time\ntime.sleep(10**6)"] {
        let out = run(src);
        assert_eq!(out.status, Status::Timeout, "{src}: {out:?}");
        assert!(out.wall_ms < 12_000, "{src}: {}", out.wall_ms);
    }
}

#[test]
fn fork_bomb_is_contained() {
    if !can_run() {
        return;
    }
    let out = run("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n");
    assert_ne!(out.status, Status::Ok, "{out:?}");
}

#[test]
fn memory_bombs_hit_the_limit() {
    if !can_run() {
        return;
    }
    let lim = Limits { memory_bytes: 256 << 20, ..limits(15) };
    for src in ["x = bytearray(10**10)", "a = []\nwhile True:\n    a.append(bytearray(10**7))"] {
        let out = run_python(src, &[], b"", &lim);
        assert!(live_processes_of(out.uid.expect("uid")).is_empty());
        assert_eq!(out.status, Status::Memory, "{src}: {out:?}");
    }
}

#[test]
fn output_floods_are_capped() {
    if !can_run() {
        return;
    }
    let gb = "import sys\nfor _ in range(16384):\n    sys.stdout.write('x' * 65536)\n";
    let line = "print('x' * 100_000_000)";
    for src in [gb, line] {
        let out = run(src);
        assert_eq!(out.status, Status::OutputLimit, "{}", &out.stderr);
        assert!(out.stdout.len() <= Limits::default().output_bytes);
    }
}

#[test]
fn big_file_is_capped() {
    if !can_run() {
        return;
    }
    let src = "f = open('big', 'wb')\nfor _ in range(10240):\n    f.write(b'0' * (1 << 20))\n";
    let out = run(src);
    assert_eq!(out.status, Status::NonzeroExit, "{out:?}");
    assert!(out.stderr.contains("File too large"), "{}", out.stderr);
}

#[test]
fn filesystem_outside_workdir_is_read_only() {
    if !can_run() {
        return;
    }
    let hostname_before = std::fs::read("/etc/hostname").ok();
    let src = r#"
import os
results = []
for path in ["/etc/aha_sandbox_test", "../aha_sandbox_escape", "/tmp/aha_sandbox_escape"]:
    try:
        open(path, "w").write("x")
        results.append("WROTE " + path)
    except OSError:
        results.append("DENIED")
for target in ["/etc/hostname", "/etc/aha_sandbox_link_target"]:
    link = "link" + str(len(results))
    os.symlink(target, link)
    try:
        open(link, "a").write("pwned")
        results.append("WROTE " + target)
    except OSError:
        results.append("DENIED")
try:
    os.mkdir("/tmp/aha_sandbox_dir")
    results.append("MKDIR")
except OSError:
    results.append("DENIED")
print(" ".join(results))
"#;
    let out = run(src);
    assert_eq!(out.status, Status::Ok, "{out:?}");
    assert_eq!(out.stdout.trim(), ["DENIED"; 6].join(" "));
    for p in
        ["/etc/aha_sandbox_test", "/tmp/aha_sandbox_escape", "/etc/aha_sandbox_link_target", "/tmp/aha_sandbox_dir"]
    {
        assert!(!std::path::Path::new(p).exists(), "{p} was created");
    }
    assert_eq!(std::fs::read("/etc/hostname").ok(), hostname_before);
}

/// A world-writable file outside the work dir: ordinary permissions would allow writing and
/// truncating it; Landlock must not.
#[test]
fn landlock_denies_what_permissions_allow() {
    if !can_run() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::temp_dir().join(format!("aha-landlock-probe-{}", std::process::id()));
    std::fs::write(&path, "keep").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let p = path.display().to_string();
    let src = format!(
        "import os\nr = []\nfor f in (lambda: open({p:?}, 'a').write('x'), lambda: os.truncate({p:?}, 0)):\n    try:\n        f()\n        r.append('DONE')\n    except OSError:\n        r.append('DENIED')\nprint(' '.join(r))\n"
    );
    let out = run(&src);
    let content = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(out.stdout.trim(), "DENIED DENIED", "{out:?}");
    assert_eq!(content, "keep");
}

#[test]
fn no_network() {
    if !can_run() {
        return;
    }
    let src = r#"
import socket
out = []
for name, fn in [
    ("tcp", lambda: socket.create_connection(("1.1.1.1", 80), timeout=2)),
    ("tcp_local", lambda: socket.create_connection(("127.0.0.1", 22), timeout=2)),
    ("udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("8.8.8.8", 53))),
    ("dns", lambda: socket.getaddrinfo("example.com", 80)),
]:
    try:
        fn()
        out.append(name + "=OPEN")
    except OSError:
        out.append(name + "=BLOCKED")
print(" ".join(out))
"#;
    let out = run(src);
    assert_eq!(out.stdout.trim(), "tcp=BLOCKED tcp_local=BLOCKED udp=BLOCKED dns=BLOCKED", "{out:?}");
}

#[test]
fn parent_environment_is_invisible() {
    if !can_run() {
        return;
    }
    let parent = std::process::id();
    let src = format!(
        r#"
import os
print(sorted(os.environ))
for p in ["/proc/1/environ", "/proc/{parent}/environ"]:
    try:
        open(p, "rb").read()
        print("READ", p)
    except OSError:
        print("DENIED")
"#
    );
    let out = run(&src);
    assert_eq!(out.status, Status::Ok, "{out:?}");
    assert!(!out.stdout.contains("READ"), "{}", out.stdout);
    assert!(out.stdout.starts_with("['HOME', 'LANG', 'PATH', 'TMPDIR']"), "{}", out.stdout);
}

#[test]
fn double_forked_daemon_is_killed() {
    if !can_run() {
        return;
    }
    let src = r#"
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        for fd in (0, 1, 2):
            os.close(fd)
        while True:
            time.sleep(1)
    os._exit(0)
time.sleep(0.2)
print("parent done")
"#;
    let out = run(src);
    assert_eq!(out.status, Status::Ok, "{out:?}");
    let uid = out.uid.expect("uid");
    std::thread::sleep(Duration::from_millis(200));
    assert!(live_processes_of(uid).is_empty(), "daemon survived");
}

const ADD_TESTS: &str =
    "assert add(1, 2) == 3\nassert add(-1, 1) == 0\nassert add(2, 2) != 5\nassert abs(add(0.25, 0.25) - 0.5) < 1e-9\n";

#[test]
fn verdict_is_decided_outside() {
    if !can_run() {
        return;
    }
    let lim = limits(5);
    let good = run_tests("def add(a, b):\n    return a + b\n", ADD_TESTS, None, &lim);
    assert!(good.passed, "{:?}", good.run);
    let cheats = [
        ("sys.exit", "import sys\ndef add(a, b):\n    return 0\nsys.exit(0)\n"),
        ("os._exit", "import os\ndef add(a, b):\n    return 0\nos._exit(0)\n"),
        ("exit in call", "import os\ndef add(a, b):\n    os._exit(0)\n"),
        (
            "always-equal",
            "class T(int):\n    def __eq__(self, o): return True\n    def __ne__(self, o): return False\n    __hash__ = int.__hash__\ndef add(a, b):\n    return T(0)\n",
        ),
        (
            "always-equal object",
            "class T:\n    def __eq__(self, o): return True\n    def __ne__(self, o): return False\ndef add(a, b):\n    return T()\n",
        ),
        ("fake pass line", "print('PASS')\ndef add(a, b):\n    return 0\n"),
        ("patched builtins", "import builtins\nbuiltins.AssertionError = Exception\ndef add(a, b):\n    return 0\n"),
        ("wrong", "def add(a, b):\n    return a - b\n"),
        (
            "shadowed abs",
            "abs = lambda x: 0\ndef add(a, b):\n    return a + b if type(a) is int else 7.0\n",
        ),
        (
            "right only when it can read the tests",
            "try:\n    open('tests.py').read()\n    ok = True\nexcept OSError:\n    ok = False\ndef add(a, b):\n    return a + b if ok else 0\n",
        ),
        (
            "reads the nonce",
            "import os\nnonce = open(f'/proc/{os.getppid()}/fd/0').readline()\nprint(nonce + ' PASS')\ndef add(a, b):\n    return 0\n",
        ),
    ];
    for (name, src) in cheats {
        let out = run_tests(src, ADD_TESTS, None, &lim);
        assert!(!out.passed, "{name} passed: {:?}", out.run);
        assert_ne!(out.run.status, Status::Refused);
    }
}

#[test]
fn thirty_two_sandboxes_at_once() {
    if !can_run() {
        return;
    }
    let handles: Vec<_> = (0..32)
        .map(|i| {
            std::thread::spawn(move || {
                let src = format!("import time\ntime.sleep(0.2)\nprint({i} * 2)");
                run_python(&src, &[], b"", &limits(20))
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let out = h.join().expect("caller thread alive");
        assert_eq!(out.status, Status::Ok, "sandbox {i}: {out:?}");
        assert_eq!(out.stdout.trim(), (i * 2).to_string());
    }
}

/// Runs the child test `name` of this binary (an ignored test, so `--ignored`) again as `nobody`
/// (uid 65534) with `AHA_SANDBOX_CHILD` set, and checks that it passed and printed `marker`.
/// One child at a time: `userns_child` requires that no other `nobody` process is alive.
fn rerun_as_nobody(name: &str, marker: &str) {
    use std::os::unix::process::CommandExt;
    static ONE_CHILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_CHILD.lock().unwrap_or_else(|e| e.into_inner());
    let exe = std::env::current_exe().expect("test binary path");
    let out = std::process::Command::new(exe)
        .args([name, "--ignored", "--exact", "--nocapture", "--test-threads", "1"])
        .env("AHA_SANDBOX_CHILD", "1")
        .env("AHA_SECRET_MARKER", "s3cr3t-marker")
        .uid(65534)
        .gid(65534)
        .output()
        .expect("spawn the test binary as nobody");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed: {stdout} {stderr}");
    assert!(stdout.contains(marker), "{stdout} {stderr}");
}

/// Child tests are `#[ignore]`d (they are not tests of their own and must not count as passed
/// ones) and run only by their parent; run any other way, they fail and say so.
fn assert_child(parent: &str) {
    assert!(
        std::env::var_os("AHA_SANDBOX_CHILD").is_some(),
        "a child process of `{parent}`, which runs it as `nobody`; run that test instead"
    );
}

/// Fail closed: run-uid isolation needs root; asked for as `nobody`, the sandbox refuses and runs
/// nothing.
#[test]
fn refuses_without_privileges() {
    if can_run() {
        rerun_as_nobody("refused_child", "REFUSED-AS-EXPECTED");
    }
}

#[test]
#[ignore = "child process of `refuses_without_privileges`; run by it"]
fn refused_child() {
    assert_child("refuses_without_privileges");
    let marker = std::env::temp_dir().join(format!("aha-refusal-{}", std::process::id()));
    let src = format!("open({:?}, 'w').write('ran')", marker.display().to_string());
    let lim = Limits { isolation: Isolation::RunUid, ..limits(5) };
    let out = run_python(&src, &[], b"", &lim);
    assert_eq!(out.status, Status::Refused, "{out:?}");
    assert!(!marker.exists(), "the program ran unconfined");
    println!("REFUSED-AS-EXPECTED: {}", out.refused.unwrap_or_default());
}

/// Unprivileged user-namespace isolation, exercised as `nobody`.
#[test]
fn unprivileged_user_namespace_isolation() {
    if can_run() {
        rerun_as_nobody("userns_child", "USERNS-OK");
    }
}

/// Live processes owned by `nobody` other than this one.
fn other_nobody_processes() -> Vec<u32> {
    let me = std::process::id();
    live_processes_of(65534).into_iter().filter(|p| *p != me).collect()
}

#[test]
#[ignore = "child process of `unprivileged_user_namespace_isolation`; run by it"]
fn userns_child() {
    assert_child("unprivileged_user_namespace_isolation");
    let stray: Vec<String> = other_nobody_processes()
        .iter()
        .map(|p| std::fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap_or_default().replace('\0', " "))
        .collect();
    assert!(stray.is_empty(), "stray nobody processes before the test: {stray:?}");
    let lim = limits(5);
    let go = |src: &str| {
        let out = run_python(src, &[], b"", &lim);
        assert_ne!(out.status, Status::Refused, "{out:?}");
        std::thread::sleep(Duration::from_millis(100));
        assert!(other_nobody_processes().is_empty(), "processes survived: {src}");
        out
    };
    assert_eq!(go("print(6 * 7)").stdout.trim(), "42");
    assert_eq!(go("while True: pass").status, Status::Timeout);
    let bomb = go("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n");
    assert_ne!(bomb.status, Status::Ok);
    let daemon = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(1000)\n    os._exit(0)\ntime.sleep(0.2)\nprint('done')\n";
    assert_eq!(go(daemon).status, Status::Ok);
    let net = "import socket\ntry:\n    socket.create_connection(('1.1.1.1', 80), timeout=2)\n    print('OPEN')\nexcept OSError:\n    print('BLOCKED')\n";
    assert_eq!(go(net).stdout.trim(), "BLOCKED");
    let fs = "r = []\nfor p in ['/tmp/aha_userns_escape', '../aha_userns_escape']:\n    try:\n        open(p, 'w').write('x')\n        r.append('WROTE')\n    except OSError:\n        r.append('DENIED')\nprint(' '.join(r))\n";
    assert_eq!(go(fs).stdout.trim(), "DENIED DENIED");
    assert!(!std::path::Path::new("/tmp/aha_userns_escape").exists());
    let parent = std::process::id();
    let env = format!("import os\nprint(sorted(os.environ))\nfor p in ['/proc/1/environ', '/proc/{parent}/environ']:\n    try:\n        print(open(p, 'rb').read())\n    except OSError:\n        print('DENIED')\n");
    let out = go(&env);
    assert!(!out.stdout.contains("s3cr3t-marker"), "{}", out.stdout);
    assert_eq!(out.stdout.matches("DENIED").count(), 2, "{}", out.stdout);
    println!("USERNS-OK");
}

#[test]
fn code_reward_through_the_registry() {
    if !can_run() {
        return;
    }
    use aha_reward::{Registry, RewardsConfig, Sample};
    let cfg = RewardsConfig::from_toml_str("[[rewards]]\nkind = \"code\"\ntimeout_s = 5.0\n").unwrap();
    let reg = Registry::build(&cfg).unwrap();
    let wrap = |code: &str| format!("<think>t</think><answer>```python\n{code}```</answer>");
    let tests = serde_json::json!("assert add(2, 3) == 5\n");
    let samples = vec![
        Sample::new(wrap("def add(a, b):\n    return a + b\n"), "").with_field("tests", tests.clone()),
        Sample::new(wrap("def add(a, b):\n    return 5\nimport sys\nsys.exit(0)\n"), "")
            .with_field("tests", tests.clone()),
        Sample::new(wrap("def add(a, b):\n    return a + b\n"), ""),
    ];
    let out = reg.score_batch(&samples).unwrap();
    assert_eq!(out[0].rewards["code"], Some(1.0));
    assert_eq!(out[1].rewards["code"], Some(0.0));
    assert_eq!(out[2].rewards["code"], None);
}
