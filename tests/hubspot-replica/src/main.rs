//! Runs the HubSpot replica for a demo: `cargo run -p duplex-hubspot-replica -- [PORT] [TOKEN]`.
//! Point a HubSpot connection at `http://127.0.0.1:PORT` (granted as such) with the token.

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let port = args.next().unwrap_or_else(|| "8089".into());
    let token = args.next().unwrap_or_else(|| "replica-token".into());
    let options = duplex_hubspot_replica::Options {
        token,
        ..Default::default()
    };
    let replica =
        duplex_hubspot_replica::Replica::start_on(&format!("127.0.0.1:{port}"), options).await;
    println!("HubSpot replica at {} (Ctrl-C to stop)", replica.url);
    let _ = tokio::signal::ctrl_c().await;
}
