//! `make bench`: measures each area and prints one table.
//!
//! Each area registers its `run(&mut Vec<Row>)` here. Arguments name the
//! areas to run (`tpm`, `attestation`, `consensus`, `mpc`, `signing`,
//! `audit`, `network`, `cluster`); none runs all.

fn main() -> anyhow::Result<()> {
    let only: Vec<String> = std::env::args().skip(1).collect();
    let want = |area: &str| only.is_empty() || only.iter().any(|o| o == area);
    let mut rows: Vec<quorate_tests::bench::Row> = Vec::new();
    // Areas append their rows here.
    if want("tpm") {
        quorate_tests::bench_tpm::run(&mut rows)?;
    }
    if want("attestation") {
        quorate_tests::bench_attestation::run(&mut rows)?;
    }
    if want("consensus") {
        quorate_tests::bench_consensus::run_bench(&mut rows)?;
    }
    if want("mpc") {
        quorate_tests::bench_mpc::run(&mut rows)?;
    }
    if want("signing") {
        quorate_tests::bench_signing::run(&mut rows)?;
    }
    if want("audit") {
        quorate_tests::bench_audit::run(&mut rows)?;
        quorate_tests::bench_audit_daemon::run(&mut rows)?;
    }
    if want("network") {
        quorate_tests::bench_netfault::run(&mut rows)?;
    }
    if want("cluster") {
        quorate_tests::bench_cluster::run(&mut rows)?;
    }
    print!("{}", quorate_tests::bench::render(&rows));
    Ok(())
}
