//! `fleet logs JOB_ID`: the job's events, one readable line each.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::{StoreArg, UsageError, table};
use crate::agent::{Event, EventKind};
use crate::store::{JobKeys, Store};

#[derive(Debug, Args)]
pub struct LogsArgs {
    pub job_id: String,
    #[command(flatten)]
    pub store: StoreArg,
    /// Keep printing new events until the job reaches a terminal state.
    #[arg(long, short)]
    pub follow: bool,
}

/// One event as a line for people.
pub fn render(e: &Event) -> String {
    let t = e.timestamp.format("%H:%M:%S");
    let body = match &e.kind {
        EventKind::SystemPromptEvent { tools, .. } => {
            format!("system prompt (tools: {})", tools.join(", "))
        }
        EventKind::MessageEvent { content, nudge, .. } => {
            format!(
                "{}{}",
                if *nudge { "[nudge] " } else { "" },
                table::first_line(content, 200)
            )
        }
        EventKind::ActionEvent {
            tool_name,
            arguments,
            meta,
            ..
        } => {
            // The model's own words on the call, when it gave them.
            let summary = meta
                .summary
                .as_deref()
                .map(|s| format!(" — {}", table::first_line(s, 80)))
                .unwrap_or_default();
            format!(
                "→ {tool_name} {}{summary}",
                table::first_line(&arguments.to_string(), 200)
            )
        }
        EventKind::ObservationEvent {
            tool_name,
            content,
            exit_code,
            is_error,
            ..
        } => format!(
            "← {tool_name}{}{} {}",
            exit_code.map(|c| format!(" exit={c}")).unwrap_or_default(),
            if *is_error { " ERROR" } else { "" },
            table::first_line(content, 200)
        ),
        EventKind::AgentErrorEvent {
            tool_name, error, ..
        } => format!("✗ {tool_name}: {}", table::first_line(error, 200)),
        EventKind::ConversationStateUpdateEvent { key, value } => format!("state {key} = {value}"),
        EventKind::ConversationErrorEvent { code, detail } => format!("ERROR {code}: {detail}"),
        EventKind::Condensation {
            forgotten_event_ids,
            ..
        } => format!("condensed {} events", forgotten_event_ids.len()),
    };
    format!(
        "{t} #{:<4} {:<11} {body}",
        e.id,
        format!("{:?}", e.source).to_lowercase()
    )
}

pub async fn run(a: LogsArgs) -> anyhow::Result<ExitCode> {
    let spec = a.store.resolve();
    let store = Store::open(&spec)
        .await
        .with_context(|| format!("opening the store {spec}"))?;
    let key = JobKeys(&a.job_id);
    if store.status(&a.job_id).await?.is_none() {
        return Err(UsageError(format!(
            "job {:?} not found in {}",
            a.job_id,
            store.locate("jobs/")
        ))
        .into());
    }
    let mut printed = 0usize;
    loop {
        let body = store.get(&key.events()).await?.unwrap_or_default();
        for line in body
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .skip(printed)
        {
            match serde_json::from_slice::<Event>(line) {
                Ok(e) => println!("{}", render(&e)),
                Err(_) => println!("{}", String::from_utf8_lossy(line)),
            }
            printed += 1;
        }
        if !a.follow {
            return Ok(ExitCode::SUCCESS);
        }
        let terminal = store
            .status(&a.job_id)
            .await?
            .is_some_and(|s| s.state.is_terminal());
        if terminal {
            // One more read after the final upload.
            let body = store.get(&key.events()).await?.unwrap_or_default();
            for line in body
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .skip(printed)
            {
                if let Ok(e) = serde_json::from_slice::<Event>(line) {
                    println!("{}", render(&e));
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}
