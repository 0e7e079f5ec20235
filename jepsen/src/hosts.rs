//! Hosts: every leader and dataserver in its own network namespace, joined
//! by veth pairs to one bridge in the root namespace.
//!
//! Names carry a per-run tag so parallel runs never collide:
//!
//! * namespaces `chj-<tag>-<node>` (e.g. `chj-3fa9c-l1`, `chj-3fa9c-d2`);
//! * the bridge `chj<tag>br`, root-side veths `chj<tag><node>` (the peer is
//!   renamed `eth0` inside its namespace);
//! * the subnet `10.77.<S>.0/24` with `S` unused on this machine; the bridge
//!   is `.1` (the harness's clients reach every node through it), nodes
//!   from `.10`.
//!
//! When the kernel passes bridged traffic through iptables
//! (`br_netfilter`), one `FORWARD -i <bridge> -o <bridge> -j ACCEPT` rule
//! (commented `chj-<tag>`) keeps a restrictive FORWARD policy from cutting
//! the nodes off; it is removed with the rest. Nothing else of the root
//! namespace is touched: faults are iptables rules and qdiscs *inside* the
//! nodes' namespaces, which vanish with them.
//!
//! Processes are started as `ip netns exec <ns> <binary> ...` (which execs,
//! so the child's pid is the server's), in their own process group, with
//! `PR_SET_PDEATHSIG = SIGKILL` so they die with the harness. [`Hosts`]
//! tears everything down on drop; [`clean`] removes leftovers of runs that
//! were killed outright.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tracing::{debug, info, warn};

/// Prefix of everything the harness creates (namespaces, links, rules).
pub const PREFIX: &str = "chj";
/// Leaders listen on this port of their own address.
pub const LEADER_PORT: u16 = 7100;
/// Dataservers listen on this port of their own address.
pub const DATASERVER_PORT: u16 = 23000;
/// The group every dataserver joins.
pub const GROUP: &str = "group1";
/// Where Debian's `libfaketime` puts its preload library.
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Comment on the iptables rules standing in for netem loss.
const LOSS_COMMENT: &str = "chj-loss";
/// Bound on a (re)start: until the process accepts TCP connections.
const START_LIMIT: Duration = Duration::from_secs(30);
/// Bound on a clean stop before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What can go wrong setting hosts up or driving their processes.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error("`{cmd}` failed: {msg}")]
    Command { cmd: String, msg: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} not found (build the workspace binaries: cargo build --workspace --bins, or set CHORUS_BIN_DIR)")]
    MissingBinary(PathBuf),
    #[error("no free 10.77.x.0/24 subnet")]
    NoSubnet,
    #[error("{node} did not accept connections within {limit:?}; log tail:\n{tail}")]
    NotListening {
        node: String,
        limit: Duration,
        tail: String,
    },
    #[error("{node} exited during start ({status}); log tail:\n{tail}")]
    Exited {
        node: String,
        status: String,
        tail: String,
    },
    #[error("the hosts were torn down")]
    TornDown,
    #[error("no node named {0}")]
    NoSuchNode(String),
}

/// What a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Dataserver,
}

/// Run `program args...`, returning stdout; a non-zero exit is an error
/// carrying stderr.
pub fn sh(program: &str, args: &[&str]) -> Result<String, HostsError> {
    let cmd = format!("{program} {}", args.join(" "));
    debug!(%cmd, "exec");
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| HostsError::Command {
            cmd: cmd.clone(),
            msg: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(HostsError::Command {
            cmd,
            msg: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Run a command inside namespace `ns`.
pub fn sh_in(ns: &str, program: &str, args: &[&str]) -> Result<String, HostsError> {
    let mut a = vec!["netns", "exec", ns, program];
    a.extend_from_slice(args);
    sh("ip", &a)
}

/// Whether this process can make network namespaces (root and a working
/// `ip netns`); `Err` says why not.
pub fn netns_available() -> Result<(), String> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not running as root".into());
    }
    let probe = format!("{PREFIX}-probe-{}", std::process::id());
    sh("ip", &["netns", "add", &probe]).map_err(|e| format!("ip netns unavailable: {e}"))?;
    let _ = sh("ip", &["netns", "del", &probe]);
    for tool in ["iptables", "tc"] {
        if Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            return Err(format!("{tool} not found"));
        }
    }
    Ok(())
}

/// The directory of the workspace binaries: `CHORUS_BIN_DIR`, else the
/// directory of the running executable (`target/<profile>`, also for
/// tests run from `target/<profile>/deps`).
pub fn bin_dir() -> Result<PathBuf, HostsError> {
    if let Some(d) = std::env::var_os("CHORUS_BIN_DIR") {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe().map_err(|source| HostsError::Io {
        what: "current_exe".into(),
        source,
    })?;
    let mut dir = exe
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}

/// `bin_dir()/name`, if it exists.
pub fn find_bin(name: &str) -> Result<PathBuf, HostsError> {
    let p = bin_dir()?.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(HostsError::MissingBinary(p))
    }
}

/// How to build the hosts.
#[derive(Debug, Clone)]
pub struct HostsOpts {
    /// The run folder: `data/<node>` and `logs/<node>.log` go under it.
    pub dir: PathBuf,
    pub leaders: usize,
    pub dataservers: usize,
    /// Extra flags for every leader.
    pub leader_args: Vec<String>,
    /// Extra flags for every dataserver (e.g. a replication mode).
    pub dataserver_args: Vec<String>,
}

/// One host: a namespace, an address, a process (maybe not running).
#[derive(Debug)]
pub struct Node {
    /// `l1`.. for leaders, `d1`.. for dataservers.
    pub name: String,
    pub role: Role,
    /// Leader id or dataserver id (from 1).
    pub id: u64,
    pub ip: Ipv4Addr,
    pub ns: String,
    veth: String,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
    /// `FAKETIME` value the process runs under, if any.
    faketime: Option<String>,
}

impl Node {
    pub fn port(&self) -> u16 {
        match self.role {
            Role::Leader => LEADER_PORT,
            Role::Dataserver => DATASERVER_PORT,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip.into(), self.port())
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

/// A snapshot of a node for nemesis decisions.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    pub role: Role,
    pub id: u64,
    pub ip: Ipv4Addr,
    pub running: bool,
    pub paused: bool,
    pub faketime: Option<String>,
}

/// A request to the spawner thread.
type SpawnRequest = (Command, std::sync::mpsc::Sender<std::io::Result<Child>>);

/// One long-lived thread that starts every server process.
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child ends,
/// so children must not be forked from short-lived (e.g. tokio blocking
/// pool) threads: this one lives as long as the [`Hosts`].
struct Spawner {
    tx: Mutex<Option<std::sync::mpsc::Sender<SpawnRequest>>>,
}

impl Spawner {
    fn new() -> Spawner {
        let (tx, rx) = std::sync::mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("chj-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .map(|_| ())
            .unwrap_or_else(|e| warn!("spawner thread: {e}"));
        Spawner {
            tx: Mutex::new(Some(tx)),
        }
    }

    fn spawn(&self, cmd: Command) -> std::io::Result<Child> {
        let (rtx, rrx) = std::sync::mpsc::channel();
        let sent = self
            .tx
            .lock()
            .as_ref()
            .map(|tx| tx.send((cmd, rtx)).is_ok())
            .unwrap_or(false);
        if !sent {
            return Err(std::io::Error::other("the spawner thread is gone"));
        }
        rrx.recv()
            .unwrap_or_else(|_| Err(std::io::Error::other("the spawner thread is gone")))
    }
}

/// Everything one run created: torn down on drop.
pub struct Hosts {
    spawner: Spawner,
    pub tag: String,
    pub subnet: u8,
    bridge: String,
    nodes: Mutex<Vec<Node>>,
    leader_bin: PathBuf,
    dataserver_bin: PathBuf,
    leader_args: Vec<String>,
    dataserver_args: Vec<String>,
    /// Teardown steps, run in reverse order.
    undo: Mutex<Vec<Vec<String>>>,
    torn_down: Mutex<bool>,
}

/// A fresh tag: 5 hex digits from the pid and the clock.
fn new_tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mix = nanos ^ (u64::from(std::process::id()) << 20) ^ rand::random::<u64>();
    format!("{:05x}", mix & 0xf_ffff)
}

/// A `10.77.S.0/24` not configured on any interface here.
fn free_subnet(tag: &str) -> Result<u8, HostsError> {
    let used = sh("ip", &["-o", "-4", "addr", "show"])?;
    let start = u32::from_str_radix(tag, 16).unwrap_or(0) % 250;
    (0..250)
        .map(|i| ((start + i) % 250 + 1) as u8)
        .find(|s| !used.contains(&format!("10.77.{s}.")))
        .ok_or(HostsError::NoSubnet)
}

fn bridge_netfilter_on() -> bool {
    std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
        .map(|s| s.trim() == "1")
        .unwrap_or(false)
}

impl Hosts {
    /// Make the bridge, the namespaces and the links (no process yet).
    /// Whatever was made before a failure is removed again.
    pub fn setup(opts: &HostsOpts) -> Result<Hosts, HostsError> {
        let leader_bin = find_bin("chorus-leader")?;
        // `CHORUS_DATASERVER_BIN` runs another build (e.g. one with the
        // `fault-injection` feature, to prove the checkers catch it).
        let dataserver_bin = match std::env::var_os("CHORUS_DATASERVER_BIN") {
            Some(p) => PathBuf::from(p),
            None => find_bin("chorus-dataserver")?,
        };
        let tag = new_tag();
        let subnet = free_subnet(&tag)?;
        let bridge = format!("{PREFIX}{tag}br");
        let mut nodes = Vec::new();
        let names = (1..=opts.leaders)
            .map(|i| (format!("l{i}"), Role::Leader, i as u64))
            .chain((1..=opts.dataservers).map(|i| (format!("d{i}"), Role::Dataserver, i as u64)));
        for (k, (name, role, id)) in names.enumerate() {
            nodes.push(Node {
                ns: format!("{PREFIX}-{tag}-{name}"),
                veth: format!("{PREFIX}{tag}{name}"),
                ip: Ipv4Addr::new(10, 77, subnet, 10 + k as u8),
                data_dir: opts.dir.join("data").join(&name),
                log: opts.dir.join("logs").join(format!("{name}.log")),
                name,
                role,
                id,
                child: None,
                paused: false,
                faketime: None,
            });
        }
        let hosts = Hosts {
            spawner: Spawner::new(),
            tag,
            subnet,
            bridge,
            nodes: Mutex::new(Vec::new()),
            leader_bin,
            dataserver_bin,
            leader_args: opts.leader_args.clone(),
            dataserver_args: opts.dataserver_args.clone(),
            undo: Mutex::new(Vec::new()),
            torn_down: Mutex::new(false),
        };
        for d in ["data", "logs"] {
            let p = opts.dir.join(d);
            std::fs::create_dir_all(&p).map_err(|source| HostsError::Io {
                what: p.display().to_string(),
                source,
            })?;
        }
        // From here on, `hosts` drops (and undoes) on any error.
        hosts.make_bridge()?;
        for n in &nodes {
            hosts.make_node(n)?;
        }
        *hosts.nodes.lock() = nodes;
        info!(tag = %hosts.tag, subnet = %format!("10.77.{}.0/24", hosts.subnet), "hosts ready");
        Ok(hosts)
    }

    fn step(&self, program: &str, args: &[&str], undo: Option<&[&str]>) -> Result<(), HostsError> {
        sh(program, args)?;
        if let Some(u) = undo {
            self.undo
                .lock()
                .push(u.iter().map(|s| s.to_string()).collect());
        }
        Ok(())
    }

    fn make_bridge(&self) -> Result<(), HostsError> {
        let br = self.bridge.as_str();
        self.step(
            "ip",
            &["link", "add", br, "type", "bridge"],
            Some(&["ip", "link", "del", br]),
        )?;
        let cidr = format!("10.77.{}.1/24", self.subnet);
        self.step("ip", &["addr", "add", &cidr, "dev", br], None)?;
        self.step("ip", &["link", "set", br, "up"], None)?;
        if bridge_netfilter_on() {
            let comment = format!("{PREFIX}-{}", self.tag);
            let rule = [
                "FORWARD",
                "-i",
                br,
                "-o",
                br,
                "-m",
                "comment",
                "--comment",
                &comment,
                "-j",
                "ACCEPT",
            ];
            let mut add = vec!["-I"];
            add.extend_from_slice(&rule);
            let mut del = vec!["iptables", "-D"];
            del.extend_from_slice(&rule);
            self.step("iptables", &add, Some(&del))?;
        }
        Ok(())
    }

    fn make_node(&self, n: &Node) -> Result<(), HostsError> {
        let ns = n.ns.as_str();
        self.step(
            "ip",
            &["netns", "add", ns],
            Some(&["ip", "netns", "del", ns]),
        )?;
        let peer = format!("{}p", n.veth);
        self.step(
            "ip",
            &[
                "link", "add", &n.veth, "type", "veth", "peer", "name", &peer,
            ],
            Some(&["ip", "link", "del", &n.veth]),
        )?;
        sh("ip", &["link", "set", &peer, "netns", ns])?;
        sh("ip", &["link", "set", &n.veth, "master", &self.bridge])?;
        sh("ip", &["link", "set", &n.veth, "up"])?;
        sh_in(ns, "ip", &["link", "set", &peer, "name", "eth0"])?;
        let cidr = format!("{}/24", n.ip);
        sh_in(ns, "ip", &["addr", "add", &cidr, "dev", "eth0"])?;
        sh_in(ns, "ip", &["link", "set", "eth0", "up"])?;
        sh_in(ns, "ip", &["link", "set", "lo", "up"])?;
        std::fs::create_dir_all(&n.data_dir).map_err(|source| HostsError::Io {
            what: n.data_dir.display().to_string(),
            source,
        })?;
        Ok(())
    }

    /// The bridge's address: where the harness's own traffic comes from.
    pub fn bridge_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 1)
    }

    /// Every leader's `ip:port`.
    pub fn leader_addrs(&self) -> Vec<String> {
        self.nodes
            .lock()
            .iter()
            .filter(|n| n.role == Role::Leader)
            .map(|n| n.addr().to_string())
            .collect()
    }

    /// A snapshot of every node.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.nodes
            .lock()
            .iter_mut()
            .map(|n| NodeInfo {
                name: n.name.clone(),
                role: n.role,
                id: n.id,
                ip: n.ip,
                running: child_alive(&mut n.child),
                paused: n.paused,
                faketime: n.faketime.clone(),
            })
            .collect()
    }

    /// The namespace of a node.
    pub fn ns_of(&self, name: &str) -> Result<String, HostsError> {
        self.with_node(name, |n| Ok(n.ns.clone()))
    }

    /// The log file of a node.
    pub fn log_of(&self, name: &str) -> Result<PathBuf, HostsError> {
        self.with_node(name, |n| Ok(n.log.clone()))
    }

    fn with_node<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut Node) -> Result<T, HostsError>,
    ) -> Result<T, HostsError> {
        let mut nodes = self.nodes.lock();
        let n = nodes
            .iter_mut()
            .find(|n| n.name == name)
            .ok_or_else(|| HostsError::NoSuchNode(name.into()))?;
        f(n)
    }

    fn args_of(&self, n: &Node, peers: &str, leaders: &str) -> (PathBuf, Vec<String>) {
        let addr = n.addr().to_string();
        let dir = n.data_dir.display().to_string();
        match n.role {
            Role::Leader => {
                let mut a = vec![
                    "--id".to_string(),
                    n.id.to_string(),
                    "--listen".into(),
                    addr,
                    "--peers".into(),
                    peers.to_string(),
                    "--data-dir".into(),
                    dir,
                ];
                a.extend(self.leader_args.iter().cloned());
                (self.leader_bin.clone(), a)
            }
            Role::Dataserver => {
                let mut a = vec![
                    "--data-dir".to_string(),
                    dir,
                    "--listen".into(),
                    addr.clone(),
                    "--advertise".into(),
                    addr,
                    "--group".into(),
                    GROUP.into(),
                    "--server-id".into(),
                    n.id.to_string(),
                    "--leaders".into(),
                    leaders.to_string(),
                    "--reserved-space".into(),
                    "16MiB".into(),
                    "--fsync".into(),
                    "always".into(),
                ];
                a.extend(self.dataserver_args.iter().cloned());
                (self.dataserver_bin.clone(), a)
            }
        }
    }

    fn peers_and_leaders(nodes: &[Node]) -> (String, String) {
        let leaders: Vec<&Node> = nodes.iter().filter(|n| n.role == Role::Leader).collect();
        let peers = leaders
            .iter()
            .map(|n| format!("{}={}", n.id, n.addr()))
            .collect::<Vec<_>>()
            .join(",");
        let addrs = leaders
            .iter()
            .map(|n| n.addr().to_string())
            .collect::<Vec<_>>()
            .join(",");
        (peers, addrs)
    }

    /// Start node `name`'s process (if it is not running), optionally
    /// under libfaketime with `FAKETIME=<faketime>`; does not wait.
    pub fn spawn(&self, name: &str, faketime: Option<&str>) -> Result<(), HostsError> {
        if *self.torn_down.lock() {
            return Err(HostsError::TornDown);
        }
        let mut nodes = self.nodes.lock();
        let (peers, leaders) = Self::peers_and_leaders(&nodes);
        let n = nodes
            .iter_mut()
            .find(|n| n.name == name)
            .ok_or_else(|| HostsError::NoSuchNode(name.into()))?;
        if child_alive(&mut n.child) {
            return Ok(());
        }
        let (bin, args) = self.args_of(n, &peers, &leaders);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .map_err(|source| HostsError::Io {
                what: n.log.display().to_string(),
                source,
            })?;
        let log2 = log.try_clone().map_err(|source| HostsError::Io {
            what: n.log.display().to_string(),
            source,
        })?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &n.ns])
            .arg(&bin)
            .args(&args)
            .env(
                "RUST_LOG",
                std::env::var("CHORUS_JEPSEN_SERVER_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .process_group(0);
        if let Some(ft) = faketime {
            cmd.env("LD_PRELOAD", LIBFAKETIME)
                .env("FAKETIME", ft)
                .env("FAKETIME_DONT_RESET", "1");
        }
        // SAFETY: prctl(2) is async-signal-safe and touches only the child.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = self.spawner.spawn(cmd).map_err(|source| HostsError::Io {
            what: format!("starting {} in {}", bin.display(), n.ns),
            source,
        })?;
        info!(node = %n.name, pid = child.id(), faketime = ?faketime, "started");
        n.child = Some(child);
        n.paused = false;
        n.faketime = faketime.map(str::to_string);
        Ok(())
    }

    /// Wait until node `name` accepts TCP connections.
    pub fn wait_listening(&self, name: &str, limit: Duration) -> Result<(), HostsError> {
        let deadline = Instant::now() + limit;
        loop {
            let (addr, exited, log) = self.with_node(name, |n| {
                let exited = match n.child.as_mut().map(|c| c.try_wait()) {
                    Some(Ok(Some(st))) => Some(st.to_string()),
                    None => Some("not started".into()),
                    _ => None,
                };
                Ok((n.addr(), exited, n.log.clone()))
            })?;
            if let Some(status) = exited {
                return Err(HostsError::Exited {
                    node: name.into(),
                    status,
                    tail: tail(&log, 20),
                });
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(HostsError::NotListening {
                    node: name.into(),
                    limit,
                    tail: tail(&log, 20),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Start every node (leaders first) and wait until each listens.
    pub fn start_all(&self) -> Result<(), HostsError> {
        let names: Vec<String> = self.nodes().into_iter().map(|n| n.name).collect();
        for n in &names {
            self.spawn(n, None)?;
        }
        for n in &names {
            self.wait_listening(n, START_LIMIT)?;
        }
        Ok(())
    }

    /// SIGKILL node `name` and reap it.
    pub fn kill(&self, name: &str) -> Result<(), HostsError> {
        self.with_node(name, |n| {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
                info!(node = %n.name, "killed");
            }
            n.paused = false;
            Ok(())
        })
    }

    /// Kill and start again (same data, same address), under `faketime`
    /// if given, and wait until it listens.
    pub fn restart(&self, name: &str, faketime: Option<&str>) -> Result<(), HostsError> {
        self.kill(name)?;
        self.spawn(name, faketime)?;
        self.wait_listening(name, START_LIMIT)
    }

    fn signal(&self, name: &str, sig: i32, paused: bool) -> Result<(), HostsError> {
        self.with_node(name, |n| {
            if let Some(c) = n.child.as_ref() {
                // SAFETY: kill(2) on our own child, not yet reaped.
                unsafe {
                    libc::kill(c.id() as libc::pid_t, sig);
                }
                n.paused = paused;
            }
            Ok(())
        })
    }

    /// SIGSTOP node `name`.
    pub fn pause(&self, name: &str) -> Result<(), HostsError> {
        self.signal(name, libc::SIGSTOP, true)
    }

    /// SIGCONT node `name`.
    pub fn resume(&self, name: &str) -> Result<(), HostsError> {
        self.signal(name, libc::SIGCONT, false)
    }

    /// Drop every packet between `a` and `b` (both ways, rules inside both
    /// namespaces).
    pub fn cut(&self, a: &str, b: &str) -> Result<(), HostsError> {
        let (ns_a, ip_a) = self.with_node(a, |n| Ok((n.ns.clone(), n.ip.to_string())))?;
        let (ns_b, ip_b) = self.with_node(b, |n| Ok((n.ns.clone(), n.ip.to_string())))?;
        sh_in(
            &ns_a,
            "iptables",
            &["-A", "INPUT", "-s", &ip_b, "-j", "DROP"],
        )?;
        sh_in(
            &ns_a,
            "iptables",
            &["-A", "OUTPUT", "-d", &ip_b, "-j", "DROP"],
        )?;
        sh_in(
            &ns_b,
            "iptables",
            &["-A", "INPUT", "-s", &ip_a, "-j", "DROP"],
        )?;
        sh_in(
            &ns_b,
            "iptables",
            &["-A", "OUTPUT", "-d", &ip_a, "-j", "DROP"],
        )?;
        Ok(())
    }

    /// Remove every partition rule in every namespace.
    pub fn heal_network(&self) -> Result<(), HostsError> {
        let nss: Vec<String> = self.nodes.lock().iter().map(|n| n.ns.clone()).collect();
        let mut first_err = None;
        for ns in nss {
            for chain in ["INPUT", "OUTPUT"] {
                if let Err(e) = sh_in(&ns, "iptables", &["-F", chain]) {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Add delay, jitter and loss to everything node `name` sends, with
    /// `tc netem`. Kernels without netem get the closest stand-in: a slow
    /// link (`tbf`, whose queue adds the delay) and random drops
    /// (iptables `statistic`, both ways). Returns what was applied.
    pub fn netem(
        &self,
        name: &str,
        delay_ms: u32,
        jitter_ms: u32,
        loss_pct: u32,
    ) -> Result<String, HostsError> {
        let ns = self.ns_of(name)?;
        let (d, j, l) = (
            format!("{delay_ms}ms"),
            format!("{jitter_ms}ms"),
            format!("{loss_pct}%"),
        );
        let netem = sh_in(
            &ns,
            "tc",
            &[
                "qdisc", "replace", "dev", "eth0", "root", "netem", "delay", &d, &j, "loss", &l,
            ],
        );
        match netem {
            Ok(_) => return Ok(format!("netem delay {d} ±{j}, loss {l}")),
            Err(HostsError::Command { msg, .. }) if msg.contains("qdisc kind is unknown") => {}
            Err(e) => return Err(e),
        }
        let latency = format!("{}ms", delay_ms.max(1) * 2);
        sh_in(
            &ns,
            "tc",
            &[
                "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", "1mbit", "burst",
                "16kbit", "latency", &latency,
            ],
        )?;
        let p = format!("{:.3}", f64::from(loss_pct) / 100.0);
        if loss_pct > 0 {
            for chain in ["INPUT", "OUTPUT"] {
                sh_in(
                    &ns,
                    "iptables",
                    &[
                        "-A",
                        chain,
                        "-m",
                        "statistic",
                        "--mode",
                        "random",
                        "--probability",
                        &p,
                        "-m",
                        "comment",
                        "--comment",
                        LOSS_COMMENT,
                        "-j",
                        "DROP",
                    ],
                )?;
            }
        }
        Ok(format!(
            "no netem in this kernel: tbf 1mbit (queue up to {latency}), random loss {l} via iptables"
        ))
    }

    /// Remove netem (or its stand-in) from every node.
    pub fn heal_netem(&self) {
        let nss: Vec<String> = self.nodes.lock().iter().map(|n| n.ns.clone()).collect();
        for ns in nss {
            // No qdisc to delete is fine.
            let _ = sh_in(&ns, "tc", &["qdisc", "del", "dev", "eth0", "root"]);
            let rules = sh_in(&ns, "iptables", &["-S"]).unwrap_or_default();
            for rule in rules.lines().filter(|r| r.contains(LOSS_COMMENT)) {
                let del = rule.replacen("-A", "-D", 1);
                let args: Vec<&str> = del.split_whitespace().collect();
                if let Err(e) = sh_in(&ns, "iptables", &args) {
                    warn!("removing loss rule in {ns}: {e}");
                }
            }
        }
    }

    /// SIGTERM every running process, wait up to a grace period, SIGKILL
    /// the rest.
    pub fn stop_all(&self) {
        let mut nodes = self.nodes.lock();
        for n in nodes.iter_mut() {
            if let Some(c) = n.child.as_ref() {
                // SAFETY: kill(2) on our own children, not yet reaped.
                unsafe {
                    libc::kill(c.id() as libc::pid_t, libc::SIGCONT);
                    libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
                }
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        for n in nodes.iter_mut() {
            if let Some(mut c) = n.child.take() {
                loop {
                    match c.try_wait() {
                        Ok(Some(_)) => break,
                        Ok(None) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(20))
                        }
                        _ => {
                            warn!(node = %n.name, "did not stop in time; killing");
                            let _ = c.kill();
                            let _ = c.wait();
                            break;
                        }
                    }
                }
            }
            n.paused = false;
        }
    }

    /// Kill every process and remove every namespace, link and rule this
    /// run made. Idempotent; also run on drop.
    pub fn teardown(&self) {
        {
            let mut done = self.torn_down.lock();
            if *done {
                return;
            }
            *done = true;
        }
        for n in self.nodes.lock().iter_mut() {
            if let Some(mut c) = n.child.take() {
                // SAFETY: kill(2) on our own child, not yet reaped.
                unsafe {
                    libc::kill(c.id() as libc::pid_t, libc::SIGCONT);
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let steps: Vec<Vec<String>> = self.undo.lock().drain(..).rev().collect();
        for s in steps {
            let Some((program, args)) = s.split_first() else {
                continue;
            };
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            if let Err(e) = sh(program, &args) {
                // A veth goes away with its namespace: that is expected.
                debug!("teardown: {e}");
            }
        }
        info!(tag = %self.tag, "hosts torn down");
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        self.teardown();
    }
}

fn child_alive(c: &mut Option<Child>) -> bool {
    matches!(c.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Remove everything any run left behind (namespaces `chj-*` and the
/// processes in them, links `chj*`, root FORWARD rules commented `chj-*`).
/// Returns what was removed.
pub fn clean() -> Result<Vec<String>, HostsError> {
    let mut removed = Vec::new();
    let list = sh("ip", &["netns", "list"])?;
    for line in list.lines() {
        let Some(ns) = line.split_whitespace().next() else {
            continue;
        };
        if !ns.starts_with(&format!("{PREFIX}-")) {
            continue;
        }
        if let Ok(pids) = sh("ip", &["netns", "pids", ns]) {
            for pid in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: kill(2) with a pid listed in our namespace.
                unsafe {
                    libc::kill(pid, libc::SIGCONT);
                    libc::kill(pid, libc::SIGKILL);
                }
                removed.push(format!("process {pid} in {ns}"));
            }
        }
        sh("ip", &["netns", "del", ns])?;
        removed.push(format!("namespace {ns}"));
    }
    let links = sh("ip", &["-o", "link", "show"])?;
    for line in links.lines() {
        // "12: chjab12cl1@if11: <...>"
        let Some(name) = line.split(':').nth(1).map(str::trim) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name);
        if name.starts_with(PREFIX) && sh("ip", &["link", "del", name]).is_ok() {
            removed.push(format!("link {name}"));
        }
    }
    if let Ok(rules) = sh("iptables", &["-S", "FORWARD"]) {
        for rule in rules.lines() {
            if rule.starts_with("-A FORWARD") && rule.contains(&format!("\"{PREFIX}-"))
                || rule.starts_with("-A FORWARD") && rule.contains(&format!(" {PREFIX}-"))
            {
                let del: Vec<String> = rule
                    .replacen("-A", "-D", 1)
                    .split_whitespace()
                    .map(|s| s.trim_matches('"').to_string())
                    .collect();
                let args: Vec<&str> = del.iter().map(String::as_str).collect();
                if sh("iptables", &args).is_ok() {
                    removed.push(format!("iptables rule `{rule}`"));
                }
            }
        }
    }
    Ok(removed)
}
