//! Rebuilds when a migration is added or changed: `sqlx::migrate!` embeds the migrations at
//! compile time, and without this cargo would not know to recompile for a new file.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
