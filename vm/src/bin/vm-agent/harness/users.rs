//! The users of the test image (xtask writes their /etc/passwd and /etc/group) and commands
//! run as them.

use std::process::Command;
use std::time::Duration;

use super::processes::{Out, run};
use super::sys::{self, Creds};

/// A user of the test image (see xtask's /etc/passwd).
#[derive(Clone, Copy, Debug)]
pub struct User {
    pub name: &'static str,
    pub uid: u32,
    pub gid: u32,
    pub groups: &'static [u32],
}

pub const STAPUSR: u32 = 156;
pub const STAPSYS: u32 = 157;
pub const STAPDEV: u32 = 158;

pub const ROOT: User = User {
    name: "root",
    uid: 0,
    gid: 0,
    groups: &[0],
};
pub const ALICE: User = User {
    name: "alice",
    uid: 1001,
    gid: 1001,
    groups: &[STAPUSR],
};
pub const BOB: User = User {
    name: "bob",
    uid: 1002,
    gid: 1002,
    groups: &[STAPDEV, STAPUSR],
};
pub const SAM: User = User {
    name: "sam",
    uid: 1003,
    gid: 1003,
    groups: &[STAPSYS, STAPUSR],
};
pub const CAROL: User = User {
    name: "carol",
    uid: 1004,
    gid: 1004,
    groups: &[],
};

impl User {
    pub fn creds(&self) -> Creds {
        let mut groups = vec![self.gid];
        groups.extend(self.groups.iter().copied().filter(|g| *g != self.gid));
        Creds {
            ruid: self.uid,
            euid: self.uid,
            rgid: self.gid,
            egid: self.gid,
            groups,
        }
    }
}

/// The user of that name (`root`, `alice`, `bob`, `sam`, `carol`).
pub fn named(name: &str) -> Option<User> {
    [ROOT, ALICE, BOB, SAM, CAROL]
        .into_iter()
        .find(|u| u.name == name)
}

/// A minimal environment for a user's command.
pub fn user_env(user: &User) -> Vec<(String, String)> {
    let home = if user.uid == 0 {
        "/root".to_owned()
    } else {
        format!("/home/{}", user.name)
    };
    vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("HOME".into(), home),
        ("USER".into(), user.name.into()),
        ("LOGNAME".into(), user.name.into()),
        ("LANG".into(), "C".into()),
    ]
}

/// Builds a command that runs as `user` with a clean environment plus `extra_env`.
pub fn command_as(user: &User, argv: &[&str], extra_env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(user_env(user))
        .current_dir("/tmp");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    sys::set_creds(&mut cmd, user.creds());
    cmd
}

/// Runs `argv` as `user`, 30 s timeout.
pub fn run_as(user: &User, argv: &[&str], extra_env: &[(&str, &str)]) -> Out {
    run(command_as(user, argv, extra_env), Duration::from_secs(30))
}
