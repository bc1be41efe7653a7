//! Stuck detection (AGENT-SPEC.md "Stuck detection"), after upstream's
//! `StuckDetector`: a pure function over the event log, checked before every step.
//!
//! It looks at the last [`WINDOW`] events, and only at those after the last user
//! message. Four patterns end a run: the same action with the same observation
//! (`action_observation`), the same action failing as a bad call again and again
//! (`action_error`, preceded by one corrective nudge), a run of agent messages with
//! no action (`monologue`), and two actions alternating with their observations
//! (`alternating_pattern`). Thresholds come from the job.

use super::events::{Event, EventKind, Source};
use crate::job::StuckThresholds;

/// How many recent events are scanned (upstream: 20).
pub const WINDOW: usize = 20;

/// Pattern names, as recorded in results and metrics.
pub const ACTION_OBSERVATION: &str = "action_observation";
pub const ACTION_ERROR: &str = "action_error";
pub const MONOLOGUE: &str = "monologue";
pub const ALTERNATING_PATTERN: &str = "alternating_pattern";

/// What the detector advises before the next step.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The same call failed `action_error` times in a row: tell the model once
    /// (per error event) before giving up on it.
    Nudge {
        tool: String,
        error: String,
        message: String,
    },
    /// The run is going in circles; the pattern names which way.
    Stuck(&'static str),
}

/// Checks the log. `None` means carry on.
pub fn check(events: &[Event], t: &StuckThresholds) -> Option<Verdict> {
    let window = &events[events.len().saturating_sub(WINDOW)..];
    let start = window
        .iter()
        .rposition(|e| e.source == Source::User && matches!(e.kind, EventKind::MessageEvent { .. }))
        .map_or(0, |i| i + 1);
    let events = &window[start..];
    if events.len()
        < t.action_observation
            .min(t.action_error)
            .min(t.monologue)
            .max(1)
    {
        return None;
    }

    let needed = t
        .action_observation
        .max(t.action_error + 1)
        .max(t.alternating_pattern);
    let (actions, observations) = collect(events, needed);

    let streak = action_error_streak(&actions, &observations);
    if streak == t.action_error && t.action_error > 0 {
        if let Some(nudge) = nudge(events, &actions, &observations, t.action_error) {
            return Some(nudge);
        }
    }
    if streak > t.action_error {
        return Some(Verdict::Stuck(ACTION_ERROR));
    }
    if repeating(&actions, &observations, t.action_observation) {
        return Some(Verdict::Stuck(ACTION_OBSERVATION));
    }
    if monologue(events, t.monologue) {
        return Some(Verdict::Stuck(MONOLOGUE));
    }
    if events.len() >= t.alternating_pattern
        && alternating(&actions, &observations, t.alternating_pattern)
    {
        return Some(Verdict::Stuck(ALTERNATING_PATTERN));
    }
    None
}

/// The corrective message for a repeated failing call (upstream's wording).
pub fn nudge_message(tool: &str, times: usize, error: &str) -> String {
    format!(
        "You've called `{tool}` with the same arguments {times} times in a row and gotten the same error \
         each time: {error}. Repeating the exact same call again will not work — review the error message \
         and either correct the arguments or try a different approach."
    )
}

/// The newest actions and the newest observations (observations and agent
/// errors), newest first, collected independently as upstream does.
fn collect(events: &[Event], needed: usize) -> (Vec<&Event>, Vec<&Event>) {
    let mut actions = Vec::new();
    let mut observations = Vec::new();
    for e in events.iter().rev() {
        match e.kind {
            EventKind::ActionEvent { .. } if actions.len() < needed => actions.push(e),
            EventKind::ObservationEvent { .. } | EventKind::AgentErrorEvent { .. }
                if observations.len() < needed =>
            {
                observations.push(e)
            }
            _ => {}
        }
        if actions.len() >= needed && observations.len() >= needed {
            break;
        }
    }
    (actions, observations)
}

/// How many of the newest (action, observation) pairs are the newest action
/// again, answered by an agent error.
fn action_error_streak(actions: &[&Event], observations: &[&Event]) -> usize {
    let Some(first) = actions.first() else {
        return 0;
    };
    actions
        .iter()
        .zip(observations)
        .take_while(|(a, o)| same(first, a) && matches!(o.kind, EventKind::AgentErrorEvent { .. }))
        .count()
}

/// The nudge for the newest error, unless it was already given for that error.
fn nudge(
    events: &[Event],
    actions: &[&Event],
    observations: &[&Event],
    times: usize,
) -> Option<Verdict> {
    let (EventKind::ActionEvent { tool_name, .. }, EventKind::AgentErrorEvent { error, .. }) =
        (&actions.first()?.kind, &observations.first()?.kind)
    else {
        return None;
    };
    let message = nudge_message(tool_name, times, error);
    let error_id = observations[0].id;
    // Pure over the log: a nudge already appended after this error event means
    // it was given; the next check must not repeat it.
    let given = events.iter().any(|e| {
        e.id > error_id
            && matches!(&e.kind, EventKind::MessageEvent { content, nudge: true, .. } if *content == message)
    });
    (!given).then(|| Verdict::Nudge {
        tool: tool_name.clone(),
        error: error.clone(),
        message,
    })
}

fn repeating(actions: &[&Event], observations: &[&Event], threshold: usize) -> bool {
    threshold > 0
        && actions.len() >= threshold
        && observations.len() >= threshold
        && actions[..threshold].iter().all(|a| same(actions[0], a))
        && observations[..threshold]
            .iter()
            .all(|o| same(observations[0], o))
}

/// Consecutive agent messages at the end. Environment nudges and condensations
/// are skipped; a user message or anything the agent did stops the count.
fn monologue(events: &[Event], threshold: usize) -> bool {
    if threshold == 0 || events.len() < threshold {
        return false;
    }
    let mut count = 0;
    for e in events.iter().rev() {
        match (&e.kind, e.source) {
            (EventKind::MessageEvent { .. }, Source::Agent) => count += 1,
            (EventKind::MessageEvent { .. }, Source::User) => break,
            (EventKind::MessageEvent { .. }, Source::Environment) => continue,
            (EventKind::Condensation { .. }, _)
            | (EventKind::ConversationStateUpdateEvent { .. }, _)
            | (EventKind::ConversationErrorEvent { .. }, _) => continue,
            _ => break,
        }
    }
    count >= threshold
}

fn alternating(actions: &[&Event], observations: &[&Event], threshold: usize) -> bool {
    if threshold < 3 || actions.len() < threshold || observations.len() < threshold {
        return false;
    }
    (0..threshold - 2)
        .all(|i| same(actions[i], actions[i + 2]) && same(observations[i], observations[i + 2]))
}

/// Equality for stuck detection: ids, call ids and timestamps never count.
fn same(a: &Event, b: &Event) -> bool {
    use EventKind::*;
    match (&a.kind, &b.kind) {
        (
            ActionEvent {
                tool_name: t1,
                arguments: a1,
                thought: th1,
                ..
            },
            ActionEvent {
                tool_name: t2,
                arguments: a2,
                thought: th2,
                ..
            },
        ) => a.source == b.source && t1 == t2 && a1 == a2 && th1 == th2,
        (
            ObservationEvent {
                tool_name: t1,
                content: c1,
                exit_code: e1,
                timed_out: to1,
                ..
            },
            ObservationEvent {
                tool_name: t2,
                content: c2,
                exit_code: e2,
                timed_out: to2,
                ..
            },
        ) => {
            // A command stopped by its timeout was still running: polling a slow
            // process shows the same output each time without being a loop, so a
            // timed-out observation never equals another one.
            !*to1 && !*to2 && t1 == t2 && c1 == c2 && e1 == e2
        }
        (AgentErrorEvent { error: e1, .. }, AgentErrorEvent { error: e2, .. }) => e1 == e2,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::events::EventLog;
    use serde_json::json;

    fn t() -> StuckThresholds {
        StuckThresholds::default()
    }

    fn user(log: &EventLog, text: &str) {
        log.append(
            Source::User,
            EventKind::MessageEvent {
                content: text.into(),
                reasoning: None,
                nudge: false,
            },
        );
    }

    fn agent_msg(log: &EventLog, text: &str) {
        log.append(
            Source::Agent,
            EventKind::MessageEvent {
                content: text.into(),
                reasoning: None,
                nudge: false,
            },
        );
    }

    fn action(log: &EventLog, command: &str, id: &str) {
        log.append(
            Source::Agent,
            EventKind::ActionEvent {
                tool_name: "terminal".into(),
                tool_call_id: id.into(),
                arguments: json!({"command": command}),
                thought: String::new(),
                step: 0,
                meta: Default::default(),
            },
        );
    }

    fn obs(log: &EventLog, content: &str, id: &str) {
        log.append(
            Source::Environment,
            EventKind::ObservationEvent {
                tool_name: "terminal".into(),
                tool_call_id: id.into(),
                content: content.into(),
                exit_code: Some(0),
                is_error: false,
                timed_out: false,
            },
        );
    }

    fn error(log: &EventLog, text: &str, id: &str) {
        log.append(
            Source::Environment,
            EventKind::AgentErrorEvent {
                tool_name: "terminal".into(),
                tool_call_id: id.into(),
                error: text.into(),
            },
        );
    }

    fn ls_pair(log: &EventLog, i: usize) {
        action(log, "ls", &format!("call_{i}"));
        obs(log, "file1.txt\nfile2.txt", &format!("call_{i}"));
    }

    fn verdict(log: &EventLog, th: &StuckThresholds) -> Option<Verdict> {
        log.with(|ev| check(ev, th))
    }

    #[test]
    fn one_pair_after_user_message_is_not_stuck() {
        let log = EventLog::in_memory();
        user(&log, "do it");
        ls_pair(&log, 0);
        assert_eq!(verdict(&log, &t()), None);
    }

    #[test]
    fn three_equal_pairs_are_not_stuck_four_are() {
        let log = EventLog::in_memory();
        user(&log, "do it");
        for i in 0..3 {
            ls_pair(&log, i);
        }
        assert_eq!(verdict(&log, &t()), None);
        ls_pair(&log, 3);
        assert_eq!(
            verdict(&log, &t()),
            Some(Verdict::Stuck(ACTION_OBSERVATION))
        );
    }

    #[test]
    fn four_equal_pairs_with_same_call_ids_are_stuck_too() {
        let log = EventLog::in_memory();
        user(&log, "do it");
        for _ in 0..4 {
            ls_pair(&log, 7);
        }
        assert_eq!(
            verdict(&log, &t()),
            Some(Verdict::Stuck(ACTION_OBSERVATION))
        );
    }

    #[test]
    fn four_pairs_after_twelve_agent_messages_without_user_message_are_stuck() {
        let log = EventLog::in_memory();
        for i in 0..12 {
            agent_msg(&log, &format!("message {i}"));
        }
        for i in 0..4 {
            ls_pair(&log, i);
        }
        assert_eq!(log.len(), 20);
        assert_eq!(
            verdict(&log, &t()),
            Some(Verdict::Stuck(ACTION_OBSERVATION))
        );
    }

    #[test]
    fn repeated_errors_nudge_once_then_stuck() {
        let log = EventLog::in_memory();
        user(&log, "do it");
        for i in 0..2 {
            action(&log, "invalid_command", &format!("c{i}"));
            error(&log, "Command not found", &format!("c{i}"));
        }
        assert_eq!(verdict(&log, &t()), None);

        action(&log, "invalid_command", "c2");
        error(&log, "Command not found", "c2");
        let Some(Verdict::Nudge {
            tool,
            error: err,
            message,
        }) = verdict(&log, &t())
        else {
            panic!("expected a nudge");
        };
        assert_eq!(tool, "terminal");
        assert_eq!(err, "Command not found");
        assert!(
            message.contains("`terminal`") && message.contains("Command not found"),
            "{message}"
        );
        // Once given, the same error event gets no second nudge.
        log.append(
            Source::Environment,
            EventKind::MessageEvent {
                content: message,
                reasoning: None,
                nudge: true,
            },
        );
        assert_eq!(verdict(&log, &t()), None);

        action(&log, "invalid_command", "c3");
        error(&log, "Command not found", "c3");
        assert_eq!(verdict(&log, &t()), Some(Verdict::Stuck(ACTION_ERROR)));
    }

    #[test]
    fn three_agent_messages_are_a_monologue() {
        let log = EventLog::in_memory();
        user(&log, "do it");
        agent_msg(&log, "one");
        agent_msg(&log, "two");
        assert_eq!(verdict(&log, &t()), None);
        agent_msg(&log, "three");
        assert_eq!(verdict(&log, &t()), Some(Verdict::Stuck(MONOLOGUE)));
    }

    #[test]
    fn environment_nudges_do_not_break_a_monologue() {
        let log = EventLog::in_memory();
        user(&log, "do it");
        for _ in 0..3 {
            agent_msg(&log, "");
            log.append(
                Source::Environment,
                EventKind::MessageEvent {
                    content: "use a tool".into(),
                    reasoning: None,
                    nudge: true,
                },
            );
        }
        assert_eq!(verdict(&log, &t()), Some(Verdict::Stuck(MONOLOGUE)));
    }

    #[test]
    fn different_commands_with_different_outputs_are_not_stuck() {
        let log = EventLog::in_memory();
        user(&log, "do it");
        for (i, (cmd, out)) in [
            ("ls", "a b"),
            ("pwd", "/workspace"),
            ("whoami", "root"),
            ("date", "Mon"),
        ]
        .iter()
        .enumerate()
        {
            action(&log, cmd, &format!("c{i}"));
            obs(&log, out, &format!("c{i}"));
        }
        assert_eq!(verdict(&log, &t()), None);
    }

    #[test]
    fn a_user_message_resets_detection() {
        let log = EventLog::in_memory();
        user(&log, "do it");
        for i in 0..4 {
            ls_pair(&log, i);
        }
        assert_eq!(
            verdict(&log, &t()),
            Some(Verdict::Stuck(ACTION_OBSERVATION))
        );
        user(&log, "try something else");
        assert_eq!(verdict(&log, &t()), None);
        action(&log, "pwd", "p");
        obs(&log, "/workspace", "p");
        assert_eq!(verdict(&log, &t()), None);
    }

    #[test]
    fn thresholds_are_per_job() {
        let th = StuckThresholds {
            action_observation: 6,
            ..StuckThresholds::default()
        };
        let log = EventLog::in_memory();
        user(&log, "do it");
        for i in 0..4 {
            ls_pair(&log, i);
        }
        assert_eq!(verdict(&log, &th), None);
        ls_pair(&log, 4);
        assert_eq!(verdict(&log, &th), None);
        ls_pair(&log, 5);
        assert_eq!(verdict(&log, &th), Some(Verdict::Stuck(ACTION_OBSERVATION)));
    }

    #[test]
    fn alternating_actions_are_stuck() {
        let log = EventLog::in_memory();
        user(&log, "do it");
        for i in 0..3 {
            action(&log, "ls", &format!("a{i}"));
            obs(&log, "a b", &format!("a{i}"));
            action(&log, "pwd", &format!("b{i}"));
            obs(&log, "/workspace", &format!("b{i}"));
        }
        assert_eq!(
            verdict(&log, &t()),
            Some(Verdict::Stuck(ALTERNATING_PATTERN))
        );
    }

    #[test]
    fn timed_out_polls_are_not_repeats() {
        let log = EventLog::in_memory();
        user(&log, "wait for the build");
        for i in 0..6 {
            action(&log, "tail -n 1 build.log", &format!("c{i}"));
            log.append(
                Source::Environment,
                EventKind::ObservationEvent {
                    tool_name: "terminal".into(),
                    tool_call_id: format!("c{i}"),
                    content: "building…".into(),
                    exit_code: None,
                    is_error: false,
                    timed_out: true,
                },
            );
        }
        assert_eq!(verdict(&log, &t()), None);
    }

    #[test]
    fn thought_is_part_of_an_action() {
        let log = EventLog::in_memory();
        user(&log, "do it");
        for i in 0..4 {
            log.append(
                Source::Agent,
                EventKind::ActionEvent {
                    tool_name: "terminal".into(),
                    tool_call_id: format!("c{i}"),
                    arguments: json!({"command": "ls"}),
                    thought: format!("attempt {i}"),
                    step: i,
                    meta: Default::default(),
                },
            );
            obs(&log, "same", &format!("c{i}"));
        }
        assert_eq!(verdict(&log, &t()), None);
    }
}
