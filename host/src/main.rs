//! The `quorate` command.

fn main() -> anyhow::Result<()> {
    Ok(())
}
