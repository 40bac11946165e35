//! A benchmark, not a test: HubSpot's rate limits bound how fast a sync with it can go, so the
//! figure that matters is how close Duplex gets to that bound. Run it with
//! `cargo test --test bench_hubspot -- --ignored --nocapture` (the local PostgreSQL).
//!
//! - initial sync of 10,000 contacts from the local HubSpot replica to PostgreSQL, records per
//!   second beside the bound the configured rate budgets allow (search requests per second x
//!   200 records per search page);
//! - requests used per 1,000 changes in each direction, beside the minimum batching allows
//!   (1,000 / 200 searches to read them; 1,000 / 100 batch calls to write them).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Instant;

use duplex::app::App;
use duplex_hubspot_replica::{Options, Replica};
use sqlx::{Connection, Executor};

const PG: &str = "postgres://postgres@127.0.0.1:5432";

async fn fresh_db(name: &str) -> String {
    let mut admin = sqlx::PgConnection::connect(&format!("{PG}/test"))
        .await
        .expect("the local PostgreSQL");
    admin
        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await
        .unwrap();
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    format!("{PG}/{name}")
}

/// Runs until caught up, with the same app (its rate budgets carry over between runs, as in
/// one `duplex run`).
async fn run_once(app: &App) {
    let state = app.open_state().unwrap();
    if let Err(e) = app.run_once(&state, |_, _| {}).await {
        panic!("the sync failed: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run with --ignored --nocapture"]
async fn hubspot_initial_sync_and_requests_per_change() {
    let contacts: usize = std::env::var("BENCH_CONTACTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let replica = Replica::start(Options::default()).await;
    // Contacts that exist before the sync begins, modified over the last 30 days.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let month = 30 * 86_400_000_i64;
    for i in 0..contacts {
        let email = format!("person{i}@example.com");
        let first = format!("First{i}");
        let modified = now - month + month * i as i64 / contacts as i64;
        replica.create_at(
            "contacts",
            &[
                ("email", &email),
                ("firstname", &first),
                ("lastname", "Bench"),
            ],
            modified,
        );
    }
    let pg = fresh_db("duplex_bench_hubspot").await;
    let mut c = sqlx::PgConnection::connect(&pg).await.unwrap();
    c.execute(
        "CREATE TABLE people (id SERIAL PRIMARY KEY, email TEXT NOT NULL UNIQUE, \
         first_name TEXT, last_name TEXT)",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "replica-token").unwrap();
    // The budgets HubSpot documents for a private app: 100 per 10 s, search 5 per second.
    let (rate, per, search_rate): (f64, f64, f64) = (100.0, 10.0, 5.0);
    let config = dir.path().join("duplex.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[connections.crm]
plugin = "{plugin}"
config = {{ base_url = "{url}", objects = ["contacts"] }}
grants = {{ http = ["{url}"] }}
secrets = {{ token = {{ file = "token" }} }}

[connections.crm.http]
headers = [{{ origin = "{url}", name = "Authorization", value = "Bearer {{token}}" }}]
rate = "100 per 10s"
rates = [{{ path = "/crm/v3/objects/*/search", rate = "5 per 1s" }}]

[connections.db]
plugin = "builtin:sql"
config = {{ url = "{pg}", tables = ["people"] }}
grants = {{ sql = ["{pg}"] }}

[syncs.people]
left = "crm.contacts"
right = "db.people"
match = {{ field = "email", ignore_case = true }}
fields = [
    {{ left = "email", right = "email" }},
    {{ left = "firstname", right = "first_name" }},
    {{ left = "lastname", right = "last_name" }},
]
"#,
            plugin = common::plugin("duplex_connector_hubspot").display(),
            url = replica.url,
        ),
    )
    .unwrap();

    // Load once, so that compiling the component is not timed.
    let app = App::load(&config).await.unwrap();
    replica.reset_stats();
    let start = Instant::now();
    run_once(&app).await;
    let took = start.elapsed();
    let stats = replica.stats();
    let searches = stats
        .requests
        .iter()
        .filter(|(k, _)| k.ends_with("/search"))
        .map(|(_, n)| n)
        .sum::<u64>();
    let per_second = contacts as f64 / took.as_secs_f64();
    let bound = (rate / per).min(search_rate) * 200.0;
    println!(
        "initial sync of {contacts} contacts, replica -> PostgreSQL: {:.1} s, {per_second:.0} records/s; \
         the rate budget allows {bound:.0} records/s (min({rate}/{per}s, {search_rate} searches/s) x 200 a page): ratio {:.2} (target 0.80)",
        took.as_secs_f64(),
        per_second / bound
    );
    println!(
        "  requests: {} in all, {searches} searches ({:.1} per 1,000 records read; the minimum is 5.0), over budget: {}",
        stats.total(),
        searches as f64 * 1000.0 / contacts as f64,
        stats.over_budget
    );

    // 1,000 changes in PostgreSQL reach HubSpot: batch calls per 1,000 beside the minimum of 10.
    c.execute("UPDATE people SET last_name = 'Changed' WHERE id <= 1000")
        .await
        .unwrap();
    replica.reset_stats();
    let start = Instant::now();
    run_once(&app).await;
    let took = start.elapsed();
    let stats = replica.stats();
    println!(
        "1,000 updates PostgreSQL -> HubSpot: {:.1} s; {} batch writes (the minimum is 10), {} requests in all, over budget: {}",
        took.as_secs_f64(),
        stats.writes(),
        stats.total(),
        stats.over_budget
    );
    assert_eq!(stats.over_budget, 0);
}
