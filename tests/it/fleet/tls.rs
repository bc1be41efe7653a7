//! A job over `amqps://`: stunnel (a TLS terminator, started here) in front of the
//! test broker, with a server certificate from a CA this test makes. The worker and
//! `fleet submit` trust it through `FLEET_AMQP_CA_FILE`; without it the connection
//! is refused at once. stunnel's own log shows the TLS sessions.

use std::time::{Duration, Instant};

use agent_fleet::job::State;

use super::harness::{Fleet, WAIT, few_steps};
use crate::tlsutil::{Stunnel, make_certs};

/// The stunnel port of this test (the range 18200-18299 is this suite's).
const TLS_PORT: u16 = 18201;

/// `amqp://user:pass@host:port/vhost` of the test broker → its `host:port`.
fn broker_addr() -> String {
    let url = super::harness::amqp_url();
    let rest = url.split_once("://").unwrap().1;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split('/').next().unwrap().to_string()
}

#[test]
fn a_job_travels_over_amqps_with_a_private_ca() {
    let certs = tempfile::tempdir().unwrap();
    let ca = make_certs(certs.path());
    let tls = Stunnel::start(certs.path(), TLS_PORT, &broker_addr(), false);
    let mut f = Fleet::new();
    let amqps = format!("amqps://guest:guest@127.0.0.1:{TLS_PORT}/%2f");

    // Without the CA: refused at once, naming the certificate problem.
    f.set_env("FLEET_QUEUE", &amqps);
    let (job, script) = few_steps("over-tls");
    let id = f.add_job("tls", job, script);
    let file = f.job_file();
    let started = Instant::now();
    let out = f.cli(&["submit", file.to_str().unwrap()], Duration::from_secs(60));
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.to_lowercase().contains("certificate"),
        "{}",
        out.stderr
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );

    // With it: the worker and the producer both go through the TLS terminator.
    f.set_env("FLEET_AMQP_CA_FILE", ca.to_str().unwrap());
    f.worker(1, &[]);
    let out = f.cli(&["submit", file.to_str().unwrap()], Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let s = &f.wait_terminal(std::slice::from_ref(&id), WAIT)[0];
    assert_eq!(
        s.state,
        State::Succeeded,
        "{:?}\n{}",
        s.error,
        f.diagnostics()
    );

    // stunnel saw TLS sessions from the worker and from submit.
    let log = tls.log();
    let sessions = tls.sessions();
    assert!(
        sessions >= 2,
        "stunnel accepted {sessions} TLS sessions:\n{log}"
    );
}
