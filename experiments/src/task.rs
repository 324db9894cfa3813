//! The synthetic task: clustered inputs whose labels need one expert ("easy") or two ("hard").
//!
//! C clusters, each with a random centre and its own random nonlinear teacher (a small tanh
//! network). A point is an anchor plus a unit Gaussian offset: an easy point's anchor is one
//! cluster's centre and its label is the argmax of that cluster's teacher applied to the offset; a
//! hard point's anchor is the midpoint of two centres and its label is the argmax of the sum of
//! both teachers, so a model has to combine two specialists to get it right. The observed input
//! adds Gaussian noise. Generation is seeded and deterministic.

use burn::config::Config;
use moe_model::InvalidValue;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Hidden units of every teacher network.
const TEACHER_WIDTH: usize = 6;

/// Parameters of the synthetic task.
#[derive(Config, Debug)]
pub struct TaskConfig {
    /// Seed of the generator: the same seed gives the same points.
    #[config(default = 7)]
    pub seed: u64,
    /// Input features.
    #[config(default = 8)]
    pub input_dim: usize,
    /// Clusters C, each with its own teacher.
    #[config(default = 8)]
    pub num_clusters: usize,
    /// Labels.
    #[config(default = 4)]
    pub num_classes: usize,
    /// Fraction of points between two clusters, labelled by the sum of both teachers.
    #[config(default = 0.3)]
    pub hard_fraction: f64,
    /// Standard deviation of the noise added to every observed input (a cluster has radius 1).
    #[config(default = 0.2)]
    pub noise: f64,
    /// Standard deviation of the cluster centres per coordinate: larger means better separated.
    #[config(default = 2.0)]
    pub cluster_spread: f64,
    /// Points in the training split.
    #[config(default = 32768)]
    pub train_size: usize,
    /// Points in the validation split.
    #[config(default = 2048)]
    pub valid_size: usize,
    /// Points in the test split.
    #[config(default = 4096)]
    pub test_size: usize,
}

impl TaskConfig {
    /// Checks every field against its allowed range.
    pub fn validate(&self) -> Result<(), InvalidValue> {
        let at_least = |field: &str, value: usize, min: usize| {
            (value < min).then(|| InvalidValue::new(field, value, format!("must be >= {min}")))
        };
        let sizes = [
            at_least("input_dim", self.input_dim, 1),
            at_least("num_clusters", self.num_clusters, 1),
            at_least("num_classes", self.num_classes, 2),
            at_least("train_size", self.train_size, 1),
            at_least("valid_size", self.valid_size, 1),
            at_least("test_size", self.test_size, 1),
        ];
        if let Some(error) = sizes.into_iter().flatten().next() {
            return Err(error);
        }
        if !(0.0..=1.0).contains(&self.hard_fraction) {
            return Err(InvalidValue::new(
                "hard_fraction",
                self.hard_fraction,
                "must be in [0, 1]",
            ));
        }
        if self.hard_fraction > 0.0 && self.num_clusters < 2 {
            return Err(InvalidValue::new(
                "num_clusters",
                self.num_clusters,
                "must be >= 2 when hard_fraction > 0 (hard points lie between two clusters)",
            ));
        }
        for (field, value) in [
            ("noise", self.noise),
            ("cluster_spread", self.cluster_spread),
        ] {
            if !(value >= 0.0 && value.is_finite()) {
                return Err(InvalidValue::new(
                    field,
                    value,
                    "must be a finite number >= 0",
                ));
            }
        }
        Ok(())
    }

    /// Points in all three splits together.
    pub fn total_size(&self) -> usize {
        self.train_size + self.valid_size + self.test_size
    }
}

/// One labelled point.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskItem {
    /// Observed input, noise included. `[input_dim]`
    pub features: Vec<f32>,
    /// Class in `0..num_classes`.
    pub label: usize,
    /// Whether the point lies between two clusters (its label needs both teachers).
    pub hard: bool,
    /// The cluster the point belongs to (of a hard point: the first of its two).
    pub cluster: usize,
}

/// A random two-layer tanh network giving class scores to points near its cluster.
struct Teacher {
    center: Vec<f64>,
    w1: Vec<Vec<f64>>, // [TEACHER_WIDTH][input_dim]
    b1: Vec<f64>,      // [TEACHER_WIDTH]
    w2: Vec<Vec<f64>>, // [num_classes][TEACHER_WIDTH]
}

impl Teacher {
    fn random(config: &TaskConfig, rng: &mut StdRng) -> Self {
        let d = config.input_dim;
        let center = normal_vec(rng, d, config.cluster_spread);
        let w1 = (0..TEACHER_WIDTH)
            .map(|_| normal_vec(rng, d, 1.0 / (d as f64).sqrt()))
            .collect();
        let b1 = normal_vec(rng, TEACHER_WIDTH, 0.5);
        let scale = 1.0 / (TEACHER_WIDTH as f64).sqrt();
        let w2 = (0..config.num_classes)
            .map(|_| normal_vec(rng, TEACHER_WIDTH, scale))
            .collect();
        Self { center, w1, b1, w2 }
    }

    /// Class scores of a point at `offset` from the centre of the region it lies in.
    fn scores(&self, offset: &[f64]) -> Vec<f64> {
        let hidden: Vec<f64> = self
            .w1
            .iter()
            .zip(&self.b1)
            .map(|(row, b)| (row.iter().zip(offset).map(|(w, x)| w * x).sum::<f64>() + b).tanh())
            .collect();
        self.w2
            .iter()
            .map(|row| row.iter().zip(&hidden).map(|(w, h)| w * h).sum())
            .collect()
    }
}

/// Generates `config.total_size()` points: the training split first, then validation, then test.
pub fn generate(config: &TaskConfig) -> Vec<TaskItem> {
    let mut rng = StdRng::seed_from_u64(config.seed);
    let teachers: Vec<Teacher> = (0..config.num_clusters)
        .map(|_| Teacher::random(config, &mut rng))
        .collect();
    (0..config.total_size())
        .map(|_| {
            let hard = rng.random::<f64>() < config.hard_fraction;
            let a = rng.random_range(0..config.num_clusters);
            // A hard point's second cluster; `a` again for an easy point (one teacher).
            let b = match hard {
                true => (a + rng.random_range(1..config.num_clusters)) % config.num_clusters,
                false => a,
            };
            let anchor: Vec<f64> = teachers[a]
                .center
                .iter()
                .zip(&teachers[b].center)
                .map(|(p, q)| (p + q) / 2.0)
                .collect();
            let offset = normal_vec(&mut rng, config.input_dim, 1.0);
            let mut scores = teachers[a].scores(&offset);
            if hard {
                scores
                    .iter_mut()
                    .zip(teachers[b].scores(&offset))
                    .for_each(|(s, t)| *s += t);
            }
            let noise = normal_vec(&mut rng, config.input_dim, config.noise);
            TaskItem {
                features: (0..config.input_dim)
                    .map(|i| (anchor[i] + offset[i] + noise[i]) as f32)
                    .collect(),
                label: argmax(&scores),
                hard,
                cluster: a,
            }
        })
        .collect()
}

/// Accuracy of always answering the most frequent label of `items`: the chance level to beat.
pub fn chance_accuracy(items: &[TaskItem], num_classes: usize) -> f64 {
    let mut counts = vec![0usize; num_classes];
    for item in items {
        counts[item.label] += 1;
    }
    *counts.iter().max().unwrap_or(&0) as f64 / items.len().max(1) as f64
}

/// `len` independent draws from N(0, std^2) (Box-Muller).
fn normal_vec(rng: &mut StdRng, len: usize, std: f64) -> Vec<f64> {
    (0..len)
        .map(|_| {
            let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]: keeps ln finite
            let u2: f64 = rng.random();
            std * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        })
        .collect()
}

fn argmax(values: &[f64]) -> usize {
    (0..values.len()).fold(0, |best, i| if values[i] > values[best] { i } else { best })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> TaskConfig {
        TaskConfig::new()
            .with_train_size(300)
            .with_valid_size(50)
            .with_test_size(50)
    }

    #[test]
    fn same_seed_gives_the_same_points_and_another_seed_does_not() {
        let config = small();
        assert_eq!(generate(&config), generate(&config));
        assert_ne!(generate(&config), generate(&config.clone().with_seed(8)));
    }

    #[test]
    fn hard_fraction_and_labels_are_as_configured() {
        let config = small().with_hard_fraction(0.5);
        let items = generate(&config);
        assert_eq!(items.len(), 400);
        let hard = items.iter().filter(|item| item.hard).count() as f64 / items.len() as f64;
        assert!((hard - 0.5).abs() < 0.1, "hard fraction {hard}");
        assert!(
            items
                .iter()
                .all(|item| item.label < 4 && item.features.len() == 8)
        );
        // Labels are not constant: a classifier has something to learn.
        assert!(chance_accuracy(&items, 4) < 0.7);
    }
}
