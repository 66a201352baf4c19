//! The arrival parser on crafted frames through BPF_PROG_TEST_RUN, in both hooks (XDP and TC
//! ingress, which share it): which frames become `syn` events, that every frame passes
//! untouched, and that the two hooks agree on every frame.

use std::process::Command;

use integration_tests::{frames::*, require_root, tracer_bin};
use serde_json::Value;

/// Runs frames through `xdp_syn` and through `tc_syn` (ports 443, 8080; embedded ranges):
/// checks the two hooks agree on each, and returns XDP's result per frame.
fn run(frames: &[Vec<u8>], extra: &[&str]) -> Vec<Value> {
    let xdp = run_hook(frames, extra, false);
    let tc = run_hook(frames, extra, true);
    for (i, (x, t)) in xdp.iter().zip(&tc).enumerate() {
        if t.get("skipped").is_some() {
            // Too short for the kernel's TC test run (truncated inside the IP header): XDP
            // must find nothing in it either.
            assert_eq!(x["events"], 0, "frame {i}: {x}");
            continue;
        }
        let same = |key: &str| assert_eq!(x[key], t[key], "frame {i}: {key}: XDP {x} / TC {t}");
        same("events");
        same("lost");
        for key in [
            "kind",
            "peer_addr",
            "peer_port",
            "local_addr",
            "local_port",
            "seq",
            "edge",
        ] {
            assert_eq!(
                x["event"][key], t["event"][key],
                "frame {i}: event {key}: XDP {x} / TC {t}"
            );
        }
    }
    xdp
}

/// Runs frames through one hook's programs: one result per frame.
fn run_hook(frames: &[Vec<u8>], extra: &[&str], tc: bool) -> Vec<Value> {
    require_root();
    let mut cmd = Command::new(tracer_bin());
    cmd.args(["xdp-test-run", "--port", "443,8080"]).args(extra);
    if tc {
        cmd.arg("--tc");
    }
    for f in frames {
        cmd.arg("--frame").arg(hex(f));
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), frames.len());
    for r in &results {
        assert_eq!(r["pass"], true, "the tracer must never change traffic: {r}");
    }
    results
}

fn events(frames: &[Vec<u8>]) -> Vec<u64> {
    run(frames, &[])
        .iter()
        .map(|r| r["events"].as_u64().unwrap())
        .collect()
}

const EDGE: &str = "173.245.48.10";
const EDGE6: &str = "2606:4700::10";
const ORIGIN: &str = "192.0.2.1";
const ORIGIN6: &str = "2001:db8::1";

#[test]
fn edge_syns_are_reported_with_their_flow() {
    let r = run(
        &[
            Frame::syn(EDGE, ORIGIN, 443).build(),
            Frame::syn(EDGE6, ORIGIN6, 8080).build(),
        ],
        &[],
    );
    assert_eq!(r[0]["events"], 1);
    let e = &r[0]["event"];
    assert_eq!(e["kind"], "syn");
    assert_eq!(e["peer_addr"], EDGE);
    assert_eq!(e["peer_port"], 40000);
    assert_eq!(e["local_addr"], ORIGIN);
    assert_eq!(e["local_port"], 443);
    assert_eq!(e["seq"], 0x1234_5678);
    assert_eq!(e["edge"], true);
    assert_eq!(r[1]["events"], 1);
    assert_eq!(r[1]["event"]["peer_addr"], EDGE6);
    assert_eq!(r[1]["event"]["local_port"], 8080);
}

/// The SYN log cannot signal, so the kernel rings the ring for the first SYN it logs where the
/// log was read empty: one wake-up for a frame's repeats while nobody reads, none for a frame
/// it does not log. The agent sleeps until the ring says something when a drain found nothing;
/// without this a SYN nobody answers would wait for its next tick.
#[test]
fn the_first_syn_logged_after_a_drain_rings_the_ring() {
    let frames = [
        Frame::syn(EDGE, ORIGIN, 443).build(),
        Frame::syn(EDGE, ORIGIN, 22).build(),
        Frame::syn(EDGE6, ORIGIN6, 8080).build(),
    ];
    for tc in [false, true] {
        let r = run_hook(&frames, &["--no-reader", "--repeat", "5"], tc);
        assert_eq!(r[0]["events"], 5, "tc {tc}: {}", r[0]);
        assert_eq!(r[0]["doorbells"], 1, "tc {tc}: {}", r[0]);
        assert_eq!(r[1]["events"], 0, "tc {tc}: {}", r[1]);
        assert_eq!(r[1]["doorbells"], 0, "tc {tc}: {}", r[1]);
        assert_eq!(r[2]["events"], 5, "tc {tc}: {}", r[2]);
        assert_eq!(r[2]["doorbells"], 1, "tc {tc}: {}", r[2]);
    }
}

#[test]
fn only_bare_syns_to_watched_ports() {
    let synack = Frame {
        flags: SYN | ACK,
        ..Frame::syn(EDGE, ORIGIN, 443)
    };
    let ack = Frame {
        flags: ACK,
        ..Frame::syn(EDGE, ORIGIN, 443)
    };
    let rst = Frame {
        flags: RST,
        ..Frame::syn(EDGE, ORIGIN, 443)
    };
    let other_port = Frame::syn(EDGE, ORIGIN, 22);
    assert_eq!(
        events(&[synack.build(), ack.build(), rst.build(), other_port.build()]),
        [0, 0, 0, 0]
    );
}

#[test]
fn non_tcp_and_non_ip_frames_are_ignored() {
    let v6_udp = Frame {
        proto: 17,
        ..Frame::syn(EDGE6, ORIGIN6, 443)
    };
    assert_eq!(events(&[udp().build(), arp(), v6_udp.build()]), [0, 0, 0]);
}

#[test]
fn fragments_are_not_parsed() {
    let mf = Frame {
        frag: 0x2000,
        ..Frame::syn(EDGE, ORIGIN, 443)
    };
    let offset = Frame {
        frag: 0x0010,
        ..Frame::syn(EDGE, ORIGIN, 443)
    };
    let v6_frag = Frame {
        v6_fragment: true,
        ..Frame::syn(EDGE6, ORIGIN6, 443)
    };
    assert_eq!(
        events(&[mf.build(), offset.build(), v6_frag.build()]),
        [0, 0, 0]
    );
}

#[test]
fn truncated_frames_are_safe() {
    let full = Frame::syn(EDGE, ORIGIN, 443).build();
    let full6 = Frame::syn(EDGE6, ORIGIN6, 443).build();
    let cuts = [
        full[..14].to_vec(),             // Ethernet only
        full[..14 + 19].to_vec(),        // IPv4 header one byte short
        full[..full.len() - 1].to_vec(), // TCP header one byte short
        full6[..14 + 39].to_vec(),       // IPv6 header short
        full6[..full6.len() - 7].to_vec(),
        {
            let mut v = Frame {
                vlans: vec![0x8100],
                ..Frame::syn(EDGE, ORIGIN, 443)
            }
            .build();
            v.truncate(16); // inside the VLAN tag
            v
        },
    ];
    assert_eq!(events(&cuts), [0, 0, 0, 0, 0, 0]);
}

#[test]
fn vlan_tags_and_ip_options_are_parsed() {
    let vlan = Frame {
        vlans: vec![0x8100],
        ..Frame::syn(EDGE, ORIGIN, 443)
    };
    let qinq = Frame {
        vlans: vec![0x88a8, 0x8100],
        ..Frame::syn(EDGE6, ORIGIN6, 443)
    };
    let options = Frame {
        ip_options: 8,
        ..Frame::syn(EDGE, ORIGIN, 443)
    };
    let r = run(&[vlan.build(), qinq.build(), options.build()], &[]);
    for x in &r {
        assert_eq!(x["events"], 1, "{x}");
    }
    assert_eq!(r[2]["event"]["local_port"], 443);
    assert_eq!(r[2]["event"]["seq"], 0x1234_5678);
}

#[test]
fn non_edge_peers_are_sent_only_with_all_peers() {
    let f = Frame::syn("192.0.2.10", ORIGIN, 443).build();
    let r = run(std::slice::from_ref(&f), &[]);
    assert_eq!(r[0]["events"], 0);
    let r = run(&[f], &["--all-peers"]);
    assert_eq!(r[0]["events"], 1);
    assert_eq!(r[0]["event"]["edge"], false);
}

#[test]
fn a_full_syn_log_counts_the_rest_as_lost() {
    // The smallest log (1024 records per CPU), nobody reading while 3000 SYNs arrive on one
    // CPU: 1024 recorded, every other one counted lost, none silently missing.
    let r = run(
        &[Frame::syn(EDGE, ORIGIN, 443).build()],
        &["--repeat", "3000", "--ring-bytes", "4096", "--no-reader"],
    );
    assert_eq!(r[0]["events"], 1024, "{}", r[0]);
    assert_eq!(r[0]["lost"], 3000 - 1024, "{}", r[0]);
}
