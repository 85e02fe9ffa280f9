//! `streamer backfill`: request backfills of a running streamer, follow them,
//! list them, cancel them. Talks only to the database (the progress table);
//! the streamer whose slot the configuration names does the work.

use std::io::IsTerminal as _;
use std::time::Duration;

use super::store::{Backfill, State, Store};
use crate::config::{parse_table, Config};
use crate::replication::{Catalog, ReplicationError};

/// What the command was asked.
#[derive(Debug, Clone)]
pub enum Command {
    /// Backfill these tables (`schema.table`), optionally from `column >= value` on.
    Request {
        /// The tables.
        tables: Vec<String>,
        /// `COLUMN=VALUE`.
        where_from: Option<String>,
        /// Return once requested, without following progress.
        detach: bool,
    },
    /// List this slot's backfills.
    Status,
    /// Cancel these backfills (all unfinished ones when empty).
    Cancel(Vec<u64>),
}

/// Runs the command; `Err` is one line for the user.
pub async fn run(config: &Config, command: Command) -> Result<(), ReplicationError> {
    let mut catalog = Catalog::connect(&config.postgres(), &config.source.slot).await?;
    let slot = &config.source.slot;
    match command {
        Command::Status => {
            let store = Store::new(catalog.client());
            if !store.exists().await? {
                println!("no backfill was ever requested in this database");
                return Ok(());
            }
            let all = store.list(slot, true).await?;
            if all.is_empty() {
                println!("no backfill for slot {slot}");
            }
            for bf in &all {
                println!("{}", line(bf));
            }
            Ok(())
        }
        Command::Cancel(ids) => {
            let store = Store::new(catalog.client());
            store.ensure().await?;
            let n = store.cancel(slot, &ids).await?;
            println!("cancelled {n} backfill(s)");
            if n == 0 {
                eprintln!(
                    "note: no unfinished backfill of slot {slot}{} (see --status)",
                    if ids.is_empty() {
                        String::new()
                    } else {
                        format!(" with id {ids:?}")
                    }
                );
            }
            Ok(())
        }
        Command::Request {
            tables,
            where_from,
            detach,
        } => {
            let wanted = validate(&mut catalog, config, &tables, where_from.as_deref()).await?;
            let store = Store::new(catalog.client());
            store.ensure().await?;
            let where_from = where_from.as_deref().and_then(split_where);
            let ids = store.request(slot, &wanted, where_from.as_ref()).await?;
            let active = catalog
                .slot_position(slot)
                .await?
                .is_some_and(|(_, active)| active);
            for bf in store.get(&ids).await? {
                println!("requested backfill {} of {}", bf.id, bf.qualified());
            }
            if !active {
                eprintln!(
                    "note: no streamer reads slot {slot} now: the backfill starts when `streamer run` does"
                );
            }
            if detach {
                return Ok(());
            }
            tokio::select! {
                r = follow(&catalog, &ids) => r,
                _ = tokio::signal::ctrl_c() => {
                    eprintln!(
                        "stopped following; the backfill goes on in the streamer \
                         (`streamer backfill --status`, or `--cancel` to stop it)"
                    );
                    Ok(())
                }
            }
        }
    }
}

fn split_where(w: &str) -> Option<(String, String)> {
    w.split_once('=')
        .map(|(c, v)| (c.trim().to_owned(), v.to_owned()))
}

/// Each table exists, is published, has a key; the `--where-from` column exists.
async fn validate(
    catalog: &mut Catalog,
    config: &Config,
    tables: &[String],
    where_from: Option<&str>,
) -> Result<Vec<(String, String)>, ReplicationError> {
    let definite = |m: String| ReplicationError::Definite(m);
    if tables.is_empty() {
        return Err(definite(
            "name the tables to backfill, e.g. `streamer backfill --config streamer.yaml public.users`".into(),
        ));
    }
    let where_from = match where_from {
        None => None,
        Some(w) => Some(split_where(w).ok_or_else(|| {
            definite(format!(
                "--where-from {w}: expected COLUMN=VALUE, e.g. updated_at=2026-01-01"
            ))
        })?),
    };
    let publication = &config.source.publication;
    let published = catalog.publication(publication).await?.ok_or_else(|| {
        definite(format!(
            "publication {publication} does not exist: start `streamer run` once (it creates it), then backfill"
        ))
    })?;
    let mut out = Vec::new();
    for t in tables {
        let (schema, name) = parse_table(t)
            .ok_or_else(|| definite(format!("`{t}` is not `schema.table` or `table`")))?;
        let described = super::driver::describe(catalog, config, &schema, &name).await?;
        let key = (schema.clone(), name.clone());
        if out.contains(&key) {
            continue;
        }
        let is_published = published.all_tables
            || published.members.contains(&key)
            || published.tables.contains(&key);
        if !is_published {
            return Err(definite(format!(
                "{schema}.{name} is not in publication {publication}, so its changes are not streamed: \
                 add it to source.tables (the streamer adds it at its next start) or run \
                 ALTER PUBLICATION {publication} ADD TABLE {schema}.{name}, then backfill it"
            )));
        }
        if let Some((column, value)) = &where_from {
            let Some(i) = described
                .table
                .columns
                .iter()
                .position(|c| &c.name == column)
            else {
                return Err(definite(format!(
                    "--where-from: {schema}.{name} has no column `{column}`"
                )));
            };
            let ty = &described.types[i];
            if let Err(e) = catalog
                .client()
                .query_one(&format!("SELECT $1::text::{ty}::text"), &[value])
                .await
            {
                let why = e
                    .as_db_error()
                    .map(|d| d.message().to_owned())
                    .unwrap_or_else(|| e.to_string());
                return Err(definite(format!(
                    "--where-from {column}={value}: not a value of type {ty} ({why})"
                )));
            }
        }
        out.push(key);
    }
    Ok(out)
}

/// One line about a backfill.
pub fn line(bf: &Backfill) -> String {
    let mut s = format!(
        "backfill {} {} {}: {} rows sent",
        bf.id,
        bf.qualified(),
        bf.state.as_str(),
        bf.rows_sent
    );
    if let (false, Some(total)) = (bf.state == State::Done, bf.rows_total()) {
        s.push_str(&format!(
            " of ~{total} ({:.0}%)",
            100.0 * bf.rows_sent as f64 / total as f64
        ));
    }
    if let (State::Running, Some(rate)) = (bf.state, bf.rate()) {
        s.push_str(&format!(", {rate:.0} rows/s"));
        if let Some(eta) = bf.eta_secs() {
            s.push_str(&format!(", ETA {eta:.0} s"));
        }
    }
    if let Some(where_from) = &bf.where_from {
        s.push_str(&format!(", from {} >= {}", where_from.0, where_from.1));
    }
    if let Some(e) = &bf.error {
        s.push_str(&format!(": {e}"));
    }
    s
}

/// Shows progress until every backfill is final: bars on a terminal, a line
/// every few seconds otherwise.
async fn follow(catalog: &Catalog, ids: &[u64]) -> Result<(), ReplicationError> {
    let store = Store::new(catalog.client());
    // The streamer notifies when a backfill ends: seen at once, not at the next look.
    store.listen().await?;
    let terminal = std::io::stderr().is_terminal();
    let bars = indicatif::MultiProgress::new();
    let style = indicatif::ProgressStyle::with_template(
        "{prefix:<28} [{bar:30}] {pos}/{len} rows {per_sec} ETA {eta} {msg}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    let mut shown: Vec<indicatif::ProgressBar> = Vec::new();
    let mut last_line = std::time::Instant::now() - Duration::from_secs(60);
    let mut last_text = String::new();
    loop {
        let all = store.get(ids).await?;
        if terminal {
            for (i, bf) in all.iter().enumerate() {
                if shown.len() <= i {
                    let bar = bars.add(indicatif::ProgressBar::new(0));
                    bar.set_style(style.clone());
                    bar.set_prefix(format!("{} {}", bf.id, bf.qualified()));
                    shown.push(bar);
                }
                let bar = &shown[i];
                bar.set_length(bf.rows_total().unwrap_or(bf.rows_sent) as u64);
                bar.set_position(bf.rows_sent as u64);
                bar.set_message(bf.state.as_str());
                if bf.state.is_final() {
                    bar.finish();
                }
            }
        } else {
            // Lines when something moved (every 5 s at most), else once a minute.
            let text: String = all.iter().map(|bf| line(bf) + "\n").collect();
            let moved = text != last_text && last_line.elapsed() >= Duration::from_secs(5);
            let done = all.iter().all(|b| b.state.is_final());
            if moved || done || last_line.elapsed() >= Duration::from_secs(60) {
                eprint!("{text}");
                last_line = std::time::Instant::now();
                last_text = text;
            }
        }
        if all.iter().all(|b| b.state.is_final()) {
            let failed: Vec<String> = all
                .iter()
                .filter(|b| b.state == State::Failed)
                .map(|b| format!("{}: {}", b.qualified(), b.error.as_deref().unwrap_or("")))
                .collect();
            return match failed.is_empty() {
                true => Ok(()),
                false => Err(ReplicationError::Definite(format!(
                    "backfill failed: {}",
                    failed.join("; ")
                ))),
            };
        }
        catalog
            .notification_within(Duration::from_millis(200))
            .await;
    }
}

/// Requests a backfill of every published table (`backfill.initial`, on the first start).
pub async fn request_initial(config: &Config) -> Result<Vec<u64>, ReplicationError> {
    let catalog = Catalog::connect(&config.postgres(), &config.source.slot).await?;
    let tables: Vec<(String, String)> = catalog
        .published(&config.source.publication)
        .await?
        .into_iter()
        .filter(|t| t.root.is_none() && t.schema != super::SCHEMA)
        .map(|t| (t.schema, t.name))
        .collect();
    let store = Store::new(catalog.client());
    store.ensure().await?;
    store.request(&config.source.slot, &tables, None).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backfill(state: State, rows_sent: i64, rows_estimate: Option<i64>) -> Backfill {
        Backfill {
            id: 7,
            slot: "s".into(),
            schema: "public".into(),
            table: "users".into(),
            where_from: None,
            state,
            last_key: None,
            rows_estimate,
            rows_sent,
            chunks: 1,
            error: None,
            running_secs: None,
        }
    }

    #[test]
    fn a_line_shows_the_estimate_until_the_backfill_is_done() {
        assert_eq!(
            line(&backfill(State::Running, 22, Some(750))),
            "backfill 7 public.users running: 22 rows sent of ~750 (3%)"
        );
        assert_eq!(
            line(&backfill(State::Done, 22, Some(750))),
            "backfill 7 public.users done: 22 rows sent",
            "done: the rows sent are the total"
        );
        assert_eq!(backfill(State::Done, 22, Some(750)).rows_total(), Some(22));
        assert_eq!(
            line(&backfill(State::Running, 900, Some(750))),
            "backfill 7 public.users running: 900 rows sent of ~900 (100%)",
            "never below the rows sent"
        );
        assert_eq!(
            line(&backfill(State::Running, 5, Some(0))),
            "backfill 7 public.users running: 5 rows sent"
        );
    }
}
