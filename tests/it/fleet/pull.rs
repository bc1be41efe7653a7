//! A worker pulls a job image from the authenticated test registry, once however
//! many jobs wait for it. The registry's access log counts the pulls (each pull
//! resolves the tag with a manifest request: five concurrent `docker pull`s of one
//! tag show as several).

use agent_fleet::job::State;

use super::harness::{Fleet, WAIT, few_steps};
use crate::registry::{self, Pushed};

#[test]
fn five_jobs_on_one_image_make_one_pull() {
    let img = Pushed::new("five");
    let mut f = Fleet::new();
    let config = registry::client_config(
        &f.dir.path().join("docker"),
        &registry::user(),
        &registry::password(),
    );
    f.set_env("DOCKER_CONFIG", config.to_str().unwrap());
    let w = f.worker(5, &[]);
    let mut ids = Vec::new();
    for i in 0..5 {
        let (mut job, script) = few_steps(&format!("pulled-{i}"));
        job["image"] = img.image.clone().into();
        ids.push(f.add_job(&format!("p{i}"), job, script));
    }
    f.submit();
    for (id, s) in ids.iter().zip(f.wait_terminal(&ids, WAIT)) {
        assert_eq!(
            s.state,
            State::Succeeded,
            "{id}: {:?}\n{}",
            s.error,
            f.diagnostics()
        );
    }
    let pulls = img.pulls();
    assert_eq!(
        pulls.len(),
        1,
        "one pull expected, the registry saw:\n{pulls:#?}"
    );
    assert!(pulls[0].contains("\" 200 "), "{}", pulls[0]);
    let log = f.worker_log(&w);
    assert_eq!(log.matches("image pulled").count(), 1, "{log}");
}
