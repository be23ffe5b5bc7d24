//! `make bench`: measures each area and prints one table.
//!
//! Each area registers its `run(&mut Vec<Row>)` here.

fn main() -> anyhow::Result<()> {
    let mut rows: Vec<quorate_tests::bench::Row> = Vec::new();
    // Areas append their rows here.
    quorate_tests::bench_tpm::run(&mut rows)?;
    quorate_tests::bench_attestation::run(&mut rows)?;
    quorate_tests::bench_consensus::run_bench(&mut rows)?;
    quorate_tests::bench_audit::run(&mut rows)?;
    quorate_tests::bench_audit_daemon::run(&mut rows)?;
    print!("{}", quorate_tests::bench::render(&rows));
    Ok(())
}
