//! `make bench`: measures each area and prints one table.
//!
//! Each area registers its `run(&mut Vec<Row>)` here.

fn main() -> anyhow::Result<()> {
    #[allow(unused_mut)]
    let mut rows: Vec<quorate_tests::bench::Row> = Vec::new();
    // Areas append their rows here, e.g. quorate_tests::bench_tpm::run(&mut rows)?;
    quorate_tests::bench_audit::run(&mut rows)?;
    print!("{}", quorate_tests::bench::render(&rows));
    Ok(())
}
