//! Tests of the bench's yardsticks: the read stream and the L2 flush on wgpu (lavapipe on a
//! CPU-only machine), and the marking of ratios under the floor in the tables.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::bandwidth::Bandwidths;
use super::expert_cases::ExpertRow;
use super::report::{self, Cells, Context, floor_ratio};
use super::{BenchRow, FloatType};
use crate::backend::BackendKind;

/// `len` random values in `[low, high)`, seeded.
fn random_values(seed: u64, len: usize, low: f32, high: f32) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(low..high)).collect()
}

#[cfg(feature = "wgpu")]
mod wgpu {
    use cubecl::prelude::*;
    use cubecl::wgpu::WgpuRuntime;

    use super::random_values;
    use crate::bench::bandwidth::{READ_VECTOR, read_stream};
    use crate::bench::l2_flush::{FLUSH_VALUE, L2Flush};

    fn client() -> ComputeClient<WgpuRuntime> {
        WgpuRuntime::client(&Default::default())
    }

    /// The partial sums add up to the f64 sum of the input, including the vectors of the last,
    /// partial pass of the grid (the length is no multiple of the grid's units or a cube's).
    #[test]
    fn read_stream_partial_sums_add_up_to_the_input_sum() {
        let client = client();
        // Every value is at least 0.5, so one vector left out loses at least 2.
        let vectors = 1024 * 256 + 1001;
        let values = random_values(31, vectors * READ_VECTOR, 0.5, 1.5);
        let input = client.create_from_slice(f32::as_bytes(&values));
        let sums = read_stream(&client, &input, values.len()).expect("whole vectors");
        let sums = client.read_one(sums).expect("read the partial sums");
        let got: f64 = f32::from_bytes(&sums).iter().map(|&s| f64::from(s)).sum();
        let want: f64 = values.iter().map(|&v| f64::from(v)).sum();
        assert!(
            (got - want).abs() < 0.5,
            "partial sums add up to {got}, the input to {want}"
        );
    }

    #[test]
    fn read_stream_refuses_part_vectors_and_overlong_reads() {
        let client = client();
        let values = random_values(32, 64, -1.0, 1.0);
        let input = client.create_from_slice(f32::as_bytes(&values));
        assert!(read_stream(&client, &input, 63).is_err());
        assert!(read_stream(&client, &input, 68).is_err());
        assert!(read_stream(&client, &input, 64).is_ok());
    }

    /// The flush overwrites every element of a random buffer longer than one pass of its grid
    /// (65535 cubes of 256 units) and no multiple of a cube.
    #[test]
    fn l2_flush_writes_every_element() {
        let client = client();
        let len = 65_535 * 256 + 1001;
        let values = random_values(33, len, -1.0, 0.9);
        let buffer = client.create_from_slice(f32::as_bytes(&values));
        let flush = L2Flush::over(&client, buffer.clone(), len).expect("the buffer holds len");
        flush.flush();
        let written = client.read_one(buffer).expect("read the flushed buffer");
        let written = f32::from_bytes(&written);
        assert_eq!(written.len(), len);
        let missed: Vec<usize> = (0..len).filter(|&i| written[i] != FLUSH_VALUE).collect();
        assert!(
            missed.is_empty(),
            "{} elements not written, the first at {:?}",
            missed.len(),
            missed.first()
        );
    }

    #[test]
    fn l2_flush_refuses_a_short_buffer() {
        let client = client();
        let buffer = client.create_from_slice(f32::as_bytes(&random_values(34, 8, -1.0, 1.0)));
        assert!(L2Flush::over(&client, buffer, 9).is_err());
    }
}

#[test]
fn floor_ratios_under_one_are_marked_only_in_print() {
    assert_eq!(floor_ratio(0.95, 2, Cells::Printed), "0.95*");
    assert_eq!(floor_ratio(0.999, 2, Cells::Printed), "1.00*");
    assert_eq!(floor_ratio(1.0, 2, Cells::Printed), "1.00");
    assert_eq!(floor_ratio(1.37, 1, Cells::Printed), "1.4");
    assert_eq!(floor_ratio(0.95, 2, Cells::Csv), "0.95");
}

/// A run's context with a read stream of 2 GB/s: a floor of 1 us per 2000 bytes.
fn context() -> Context {
    Context {
        backend: BackendKind::Wgpu,
        dtype: FloatType::F32,
        bandwidths: Bandwidths {
            copy: 1.5e9,
            read: 2e9,
        },
        l2_flush_bytes: 4 << 20,
        cublas: "unavailable".into(),
    }
}

/// A routing row whose device time is `ratio` times its floor (2000 bytes: 1 us).
fn routing_row(case: &str, ratio: f64) -> BenchRow {
    BenchRow {
        op: "route",
        case: case.into(),
        kernel_wall: Duration::from_micros(9),
        kernel_device: Duration::from_secs_f64(ratio * 1e-6),
        floor_bytes: 2000,
        tensor_ops: Duration::from_micros(90),
    }
}

/// An expert row whose median is `ratio` times its floor (2000 bytes: 1 us), queued at
/// `queued_ratio` times it.
fn expert_row(case: &str, ratio: f64, queued_ratio: f64) -> ExpertRow {
    ExpertRow {
        op: "layer",
        case: case.into(),
        tiles: "decode 16x32x32 / 16x32x32".into(),
        routed_rows: 5,
        time_us: [ratio, ratio * 0.9, ratio * 1.1],
        wall_us: Some(3.0),
        queued_us: Some(queued_ratio),
        flops: 1e6,
        floor_bytes: 2000,
        cublas_us: Err("unavailable".into()),
        burn_us: None,
        dense_total_us: None,
        mean_k: Some(1.3),
    }
}

/// The printed line of `case` in `table`.
fn line_of<'a>(table: &'a str, case: &str) -> &'a str {
    table
        .lines()
        .find(|line| line.contains(case))
        .unwrap_or_else(|| panic!("no line of {case} in\n{table}"))
}

#[test]
fn routing_table_marks_rows_under_the_floor_and_says_why() {
    let rows = [routing_row("under", 0.6), routing_row("over", 1.7)];
    let table = report::routing_table(&rows, &context());
    assert!(line_of(&table, "under").contains(" 0.6* "), "{table}");
    assert!(line_of(&table, "over").contains(" 1.7 "), "{table}");
    assert!(!line_of(&table, "over").contains('*'), "{table}");
    assert!(table.contains("* x floor under 1: "), "{table}");
    assert!(table.contains("read-stream bandwidth"), "{table}");
    assert!(table.contains("back to back, L2 warm"), "{table}");
}

#[test]
fn experts_table_marks_both_floor_columns_and_names_how_each_was_timed() {
    let rows = [expert_row("slow", 1.5, 0.8), expert_row("fast", 0.7, 1.2)];
    let table = report::experts_table(&rows, &context());
    let slow = line_of(&table, "slow");
    assert!(
        slow.contains(" 1.50 ") && slow.contains(" 0.80* "),
        "{table}"
    );
    let fast = line_of(&table, "fast");
    assert!(
        fast.contains(" 0.70* ") && fast.contains(" 1.20 "),
        "{table}"
    );
    assert!(table.contains("* x floor under 1: "), "{table}");
    assert!(table.contains("L2 flushed (a 4 MiB write)"), "{table}");
    assert!(table.contains("back to back, L2 warm"), "{table}");
}

/// The CSV keeps the ratios plain numbers, and bench.json carries both bandwidths and names the
/// floor's.
#[test]
fn written_tables_keep_ratios_numeric_and_record_both_bandwidths() {
    let directory = std::env::temp_dir().join(format!("bench-report-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    report::write(
        &directory,
        &context(),
        &[routing_row("under", 0.6)],
        &[expert_row("fast", 0.7, 0.8)],
    )
    .unwrap();
    let column = |file: &str, name: &str| -> f64 {
        let csv = std::fs::read_to_string(directory.join(file)).unwrap();
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        let at = header.iter().position(|h| *h == name).unwrap();
        let cell = lines.next().unwrap().split(',').nth(at).unwrap().to_owned();
        cell.parse()
            .unwrap_or_else(|_| panic!("{file} {name}: {cell}"))
    };
    assert_eq!(column("routing.csv", "ratio_to_floor"), 0.6);
    assert_eq!(column("experts.csv", "ratio_to_floor"), 0.7);
    assert_eq!(column("experts.csv", "queued_ratio_to_floor"), 0.8);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(directory.join("bench.json")).unwrap())
            .unwrap();
    assert_eq!(json["copy_bandwidth_gb_s"], 1.5);
    assert_eq!(json["read_bandwidth_gb_s"], 2.0);
    assert_eq!(json["floor_bandwidth"], "read_bandwidth_gb_s");
    assert_eq!(json["l2_flush_bytes"], 4 << 20);
    std::fs::remove_dir_all(directory).unwrap();
}
