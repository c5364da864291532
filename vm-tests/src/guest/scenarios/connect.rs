//! connect: CIDR, port and protocol rules for IPv4, IPv6 and IPv4-mapped IPv6, and a deny rule
//! inside an allowed range. Listeners run in the (ungoverned) runner.

use crate::guest::fixtures::{self, EXEC_ALLOW_ALL, FILES_ALLOW_ALL};
use crate::guest::out::Ctx;
use crate::guest::sys::{Cgroup, Outcome, Proto, connect_op};
use anyhow::{Context as _, Result};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::net::UnixListener;

const UNIX_SOCKET: &str = "/run/connect-test.sock";

pub fn connect_rules_match_cidr_port_and_protocol(ctx: &mut Ctx) -> Result<()> {
    // 0.0.0.0 so that 127.0.0.2/127.0.0.3 reach a listener too; [::1] is its own socket.
    let _tcp8080 = TcpListener::bind("0.0.0.0:8080").context("listening on 0.0.0.0:8080")?;
    let _tcp9090 = TcpListener::bind("0.0.0.0:9090").context("listening on 0.0.0.0:9090")?;
    let _tcp6 = TcpListener::bind("[::1]:8080").context("listening on [::1]:8080")?;
    let _tcp6_9090 = TcpListener::bind("[::1]:9090").context("listening on [::1]:9090")?;
    let _udp = UdpSocket::bind("127.0.0.1:5353").context("binding udp 127.0.0.1:5353")?;
    let _ = std::fs::remove_file(UNIX_SOCKET);
    let _unix = UnixListener::bind(UNIX_SOCKET).context("listening on a unix socket")?;

    let cg = Cgroup::create("/connect")?;
    let free = Cgroup::create("/connect_ungoverned")?;
    let dir = fixtures::profile_dir("connect")?;
    let body = format!(
        "{EXEC_ALLOW_ALL}{FILES_ALLOW_ALL}  network:
    connect:
      default: deny
      allow:
        - {{cidr: 127.0.0.0/8, ports: [8080], protocol: tcp}}
        - {{cidr: \"::1/128\", ports: [8080], protocol: tcp}}
      deny:
        - {{cidr: 127.0.0.3/32}}
"
    );
    fixtures::write_profile(
        &dir,
        "connect.yaml",
        &fixtures::profile("connect", &cg.rel, "enforce", "deny", &body),
    )?;
    ctx.start_daemon(&dir, "daemon_ready")?;

    let cases: &[(&str, &str, Proto, Outcome)] = &[
        (
            "allowed_tcp_port_connects",
            "127.0.0.1:8080",
            Proto::Tcp,
            Outcome::Ok,
        ),
        (
            "other_tcp_port_denied",
            "127.0.0.1:9090",
            Proto::Tcp,
            Outcome::EPERM,
        ),
        (
            "udp_to_tcp_only_rule_denied",
            "127.0.0.1:5353",
            Proto::Udp,
            Outcome::EPERM,
        ),
        (
            "udp_on_allowed_port_denied",
            "127.0.0.1:8080",
            Proto::Udp,
            Outcome::EPERM,
        ),
        (
            "other_address_in_allowed_cidr_connects",
            "127.0.0.2:8080",
            Proto::Tcp,
            Outcome::Ok,
        ),
        // No route to 10/8 in the VM: only a decision before routing gives EPERM.
        (
            "address_outside_cidr_denied_before_routing",
            "10.1.2.3:8080",
            Proto::Tcp,
            Outcome::EPERM,
        ),
        (
            "deny_rule_inside_allowed_cidr_wins",
            "127.0.0.3:8080",
            Proto::Tcp,
            Outcome::EPERM,
        ),
        (
            "ipv6_allowed_connects",
            "[::1]:8080",
            Proto::Tcp,
            Outcome::Ok,
        ),
        (
            "ipv6_other_port_denied",
            "[::1]:9090",
            Proto::Tcp,
            Outcome::EPERM,
        ),
        (
            "ipv6_outside_cidr_denied",
            "[2001:db8::1]:8080",
            Proto::Tcp,
            Outcome::EPERM,
        ),
        (
            "ipv4_mapped_ipv6_allowed_connects",
            "[::ffff:127.0.0.1]:8080",
            Proto::Tcp,
            Outcome::Ok,
        ),
        (
            "ipv4_mapped_ipv6_other_port_denied",
            "[::ffff:127.0.0.1]:9090",
            Proto::Tcp,
            Outcome::EPERM,
        ),
        (
            "ipv4_mapped_ipv6_deny_rule_wins",
            "[::ffff:127.0.0.3]:8080",
            Proto::Tcp,
            Outcome::EPERM,
        ),
    ];
    for (check, addr, proto, expected) in cases {
        let addr: SocketAddr = addr.parse().expect("valid address");
        let r = ctx.op(Some(&cg), &format!("connect({proto} {addr})"), || {
            connect_op(addr, *proto)
        });
        ctx.expect(check, expected, &r);
    }

    let r = ctx.op(Some(&cg), &format!("connect(unix {UNIX_SOCKET})"), || {
        std::os::unix::net::UnixStream::connect(UNIX_SOCKET)
            .map(drop)
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
    });
    ctx.expect("unix_socket_connect_not_governed", &Outcome::Ok, &r);

    let addr: SocketAddr = "127.0.0.1:9090".parse().expect("valid address");
    let r = ctx.op(Some(&free), &format!("connect(tcp {addr})"), || {
        connect_op(addr, Proto::Tcp)
    });
    ctx.expect(
        "denied_port_connects_from_ungoverned_cgroup",
        &Outcome::Ok,
        &r,
    );

    ctx.stop_daemon("daemon_stops_on_sigterm");
    let _ = std::fs::remove_file(UNIX_SOCKET);
    Ok(())
}
