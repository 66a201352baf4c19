//! The firewall managers an admin really runs, confined to a lab namespace: fail2ban with its
//! own configuration, socket and state in a temporary directory (its actions run iptables in
//! the origin's namespace), and ufw with a private copy of /etc/ufw mounted over the real one
//! in a mount namespace of its own — the host's firewall and files are never touched.

use crate::{Netns, TempDir};

/// A fail2ban server in a namespace, killed on drop.
pub struct Fail2ban {
    ns: String,
    dir: TempDir,
}

impl Fail2ban {
    /// Starts fail2ban in `ns` with one jail watching an empty log, using `banaction`
    /// (iptables-multiport, nftables-multiport, ...).
    pub fn start(ns: &Netns, jail: &str, banaction: &str) -> Fail2ban {
        let dir = TempDir::new(&format!("f2b-{}", ns.name));
        let d = dir.0.display();
        crate::sh(&format!(
            "cp -r /etc/fail2ban {d}/conf && rm -f {d}/conf/jail.d/* && touch {d}/web.log"
        ));
        std::fs::write(
            dir.path("conf/fail2ban.local"),
            format!(
                "[Definition]\nsocket = {d}/f2b.sock\npidfile = {d}/f2b.pid\ndbfile = :memory:\nlogtarget = {d}/f2b.log\n"
            ),
        )
        .expect("fail2ban.local");
        std::fs::write(
            dir.path("conf/jail.local"),
            format!(
                "[DEFAULT]\nbanaction = {banaction}\nbackend = polling\n\n[{jail}]\nenabled = true\nport = http,https\nlogpath = {d}/web.log\n"
            ),
        )
        .expect("jail.local");
        let f2b = Fail2ban {
            ns: ns.name.clone(),
            dir,
        };
        // `start` returns once the server answers (the client waits for it): no ping after.
        f2b.client("start");
        f2b
    }

    fn try_client(&self, args: &str) -> Result<String, String> {
        let out = std::process::Command::new("sh")
            .args([
                "-c",
                &format!(
                    "ip netns exec {} fail2ban-client -c {}/conf {args}",
                    self.ns,
                    self.dir.0.display()
                ),
            ])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs `fail2ban-client ARGS` against this server (`set JAIL banip ADDR`).
    pub fn client(&self, args: &str) -> String {
        self.try_client(args)
            .unwrap_or_else(|e| panic!("fail2ban-client {args}: {e}"))
    }
}

impl Drop for Fail2ban {
    fn drop(&mut self) {
        // Killed, not stopped through the client: the namespace and its rules go with the
        // test, and in the emulated kernel-matrix guests each Python start costs seconds.
        if let Ok(pid) = std::fs::read_to_string(self.dir.path("f2b.pid")) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                // SAFETY: kill(2) of the fail2ban server this value started (its pid file).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Runs ufw commands in `ns` against a private copy of /etc/ufw kept in `dir`.
pub fn ufw(ns: &Netns, dir: &TempDir, commands: &[&str]) -> String {
    let etc = dir.path("ufw");
    if !etc.exists() {
        crate::sh(&format!("cp -a /etc/ufw {}", etc.display()));
    }
    let script: Vec<String> = commands.iter().map(|c| format!("ufw {c}")).collect();
    ns.sh(&format!(
        "unshare -m sh -c 'mount --bind {} /etc/ufw && {}'",
        etc.display(),
        script.join(" && ")
    ))
}
