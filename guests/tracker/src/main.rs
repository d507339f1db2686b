//! tracker — multi-object tracking over a synthetic scene, as a guest that also uses the
//! host's clocks and random numbers.
//!
//! Ground-truth objects move at near-constant velocity through a 1 km square; they are
//! born at the edges and die when they leave or at random. Each frame yields noisy
//! detections (missed with some probability) plus clutter. A bank of constant-velocity
//! Kalman filters is associated to the detections with the Hungarian algorithm on
//! Mahalanobis costs (gated); unmatched detections start tentative tracks, tracks are
//! confirmed after 3 hits and deleted after a run of misses.
//!
//! Host interaction, on purpose:
//! - the seeds of the scene and noise generators come from WASI `random_get`, read at the
//!   start and again every `RESEED_EVERY` frames (the roam host gives each job its own
//!   deterministic random stream, so output is reproducible per job);
//! - `Instant` and `SystemTime` are read every frame only to check that monotonic time
//!   never goes backwards (across a migration too). Times themselves are never printed.
//!
//! Usage: tracker [FRAMES | --size FRAMES] [--print-tracks N]

// Small dense matrix code reads best with explicit indices.
#![allow(clippy::needless_range_loop)]

use common::{Args, Fnv, Rng};
use std::io::Write;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

#[link(wasm_import_module = "wasi_snapshot_preview1")]
extern "C" {
    fn random_get(buf: *mut u8, len: usize) -> u16;
}

/// Eight bytes from the host's random stream.
fn host_seed() -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: `buf` is valid for writes of its length for the duration of the call.
    let errno = unsafe { random_get(buf.as_mut_ptr(), buf.len()) };
    if errno != 0 {
        common::fail(&format!("random_get failed with errno {errno}"));
    }
    u64::from_le_bytes(buf)
}

const DT: f64 = 0.1;
const AREA: f64 = 1000.0;
const P_DETECT: f64 = 0.9;
const MEAS_SIGMA: f64 = 3.0;
const CLUTTER_MEAN: f64 = 6.0;
const GATE: f64 = 13.8; // chi-square, 2 dof, 99.9 %
const RESEED_EVERY: u64 = 500;
const BIG: f64 = 1e9;

struct Truth {
    id: u64,
    pos: [f64; 2],
    vel: [f64; 2],
}

struct Scene {
    rng: Rng,
    objects: Vec<Truth>,
    next_id: u64,
    births: u64,
    deaths: u64,
}

impl Scene {
    fn spawn(&mut self) {
        let r = &mut self.rng;
        let edge = r.below(4);
        let along = r.range(0.0, AREA);
        let speed = r.range(5.0, 25.0);
        let angle = r.range(-1.0, 1.0);
        let (pos, dir) = match edge {
            0 => ([0.0, along], 0.0f64),
            1 => ([AREA, along], std::f64::consts::PI),
            2 => ([along, 0.0], std::f64::consts::FRAC_PI_2),
            _ => ([along, AREA], -std::f64::consts::FRAC_PI_2),
        };
        let a = dir + angle;
        self.objects.push(Truth {
            id: self.next_id,
            pos,
            vel: [speed * a.cos(), speed * a.sin()],
        });
        self.next_id += 1;
        self.births += 1;
    }

    fn step(&mut self) {
        for o in self.objects.iter_mut() {
            o.vel[0] += 0.5 * self.rng.gauss() * DT;
            o.vel[1] += 0.5 * self.rng.gauss() * DT;
            o.pos[0] += o.vel[0] * DT;
            o.pos[1] += o.vel[1] * DT;
        }
        let before = self.objects.len();
        let rng = &mut self.rng;
        self.objects.retain(|o| {
            let inside =
                (-5.0..=AREA + 5.0).contains(&o.pos[0]) && (-5.0..=AREA + 5.0).contains(&o.pos[1]);
            inside && !rng.chance(0.0005)
        });
        self.deaths += (before - self.objects.len()) as u64;
        let target = 60;
        let p_birth = if self.objects.len() < target {
            0.6
        } else {
            0.1
        };
        if self.rng.chance(p_birth) {
            self.spawn();
        }
    }

    fn detections(&mut self) -> Vec<[f64; 2]> {
        let mut dets = Vec::with_capacity(self.objects.len() + 16);
        for o in &self.objects {
            if self.rng.chance(P_DETECT) {
                dets.push([
                    o.pos[0] + MEAS_SIGMA * self.rng.gauss(),
                    o.pos[1] + MEAS_SIGMA * self.rng.gauss(),
                ]);
            }
        }
        // Poisson clutter by inversion (deterministic for a given stream).
        let mut k = 0;
        let mut p = (-CLUTTER_MEAN).exp();
        let mut cdf = p;
        let u = self.rng.uniform();
        while u > cdf && k < 60 {
            k += 1;
            p *= CLUTTER_MEAN / k as f64;
            cdf += p;
        }
        for _ in 0..k {
            dets.push([self.rng.range(0.0, AREA), self.rng.range(0.0, AREA)]);
        }
        // Shuffle so detection order says nothing about identity.
        for i in (1..dets.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            dets.swap(i, j);
        }
        dets
    }
}

type M4 = [[f64; 4]; 4];

struct Track {
    id: u64,
    x: [f64; 4],
    p: M4,
    hits: u32,
    misses: u32,
    confirmed: bool,
    age: u32,
    /// Id of the object this track followed last frame (for counting id switches).
    truth: Option<u64>,
}

impl Track {
    fn new(id: u64, z: [f64; 2]) -> Track {
        let mut p = [[0.0; 4]; 4];
        p[0][0] = MEAS_SIGMA * MEAS_SIGMA;
        p[1][1] = MEAS_SIGMA * MEAS_SIGMA;
        p[2][2] = 400.0;
        p[3][3] = 400.0;
        Track {
            id,
            x: [z[0], z[1], 0.0, 0.0],
            p,
            hits: 1,
            misses: 0,
            confirmed: false,
            age: 0,
            truth: None,
        }
    }

    /// Constant-velocity prediction: x = F x, P = F P F^T + Q.
    fn predict(&mut self) {
        let x = self.x;
        self.x = [x[0] + DT * x[2], x[1] + DT * x[3], x[2], x[3]];
        let mut f = [[0.0; 4]; 4];
        for (i, row) in f.iter_mut().enumerate() {
            row[i] = 1.0;
        }
        f[0][2] = DT;
        f[1][3] = DT;
        let mut fp = [[0.0; 4]; 4];
        for i in 0..4 {
            for j in 0..4 {
                fp[i][j] = (0..4).map(|k| f[i][k] * self.p[k][j]).sum();
            }
        }
        let q = 1.0; // white acceleration noise intensity
        let (dt2, dt3, dt4) = (DT * DT, DT * DT * DT, DT * DT * DT * DT);
        for i in 0..4 {
            for j in 0..4 {
                self.p[i][j] = (0..4).map(|k| fp[i][k] * f[j][k]).sum();
            }
        }
        for a in 0..2 {
            self.p[a][a] += q * dt4 / 4.0;
            self.p[a][a + 2] += q * dt3 / 2.0;
            self.p[a + 2][a] += q * dt3 / 2.0;
            self.p[a + 2][a + 2] += q * dt2;
        }
        self.age += 1;
    }

    /// Innovation and inverse innovation covariance for a position measurement.
    fn innovation(&self, z: [f64; 2]) -> ([f64; 2], [[f64; 2]; 2]) {
        let r = MEAS_SIGMA * MEAS_SIGMA;
        let s = [
            [self.p[0][0] + r, self.p[0][1]],
            [self.p[1][0], self.p[1][1] + r],
        ];
        let det = s[0][0] * s[1][1] - s[0][1] * s[1][0];
        let inv = [
            [s[1][1] / det, -s[0][1] / det],
            [-s[1][0] / det, s[0][0] / det],
        ];
        ([z[0] - self.x[0], z[1] - self.x[1]], inv)
    }

    fn mahalanobis2(&self, z: [f64; 2]) -> f64 {
        let (y, si) = self.innovation(z);
        y[0] * (si[0][0] * y[0] + si[0][1] * y[1]) + y[1] * (si[1][0] * y[0] + si[1][1] * y[1])
    }

    fn update(&mut self, z: [f64; 2]) {
        let (y, si) = self.innovation(z);
        // K = P H^T S^-1 (4x2); H selects the position rows.
        let mut k = [[0.0; 2]; 4];
        for (i, row) in k.iter_mut().enumerate() {
            for (j, kij) in row.iter_mut().enumerate() {
                *kij = self.p[i][0] * si[0][j] + self.p[i][1] * si[1][j];
            }
        }
        for (i, row) in k.iter().enumerate() {
            self.x[i] += row[0] * y[0] + row[1] * y[1];
        }
        let p = self.p;
        for (i, row) in k.iter().enumerate() {
            for j in 0..4 {
                self.p[i][j] = p[i][j] - (row[0] * p[0][j] + row[1] * p[1][j]);
            }
        }
        self.hits += 1;
        self.misses = 0;
        if self.hits >= 3 {
            self.confirmed = true;
        }
    }
}

/// Hungarian algorithm (Kuhn–Munkres with potentials), O(n^2 m) for an n x m cost matrix
/// with n <= m. Returns, for each row, its assigned column.
fn hungarian(cost: &[f64], n: usize, m: usize) -> Vec<usize> {
    debug_assert!(n <= m);
    let mut u = vec![0.0f64; n + 1];
    let mut v = vec![0.0f64; m + 1];
    let mut p = vec![0usize; m + 1]; // p[j]: row (1-based) assigned to column j
    let mut way = vec![0usize; m + 1];
    let mut minv = vec![0.0f64; m + 1];
    let mut used = vec![false; m + 1];
    for i in 1..=n {
        p[0] = i;
        let mut j0 = 0;
        minv.iter_mut().for_each(|x| *x = f64::INFINITY);
        used.iter_mut().for_each(|x| *x = false);
        loop {
            used[j0] = true;
            let i0 = p[j0];
            let mut delta = f64::INFINITY;
            let mut j1 = 0;
            for j in 1..=m {
                if !used[j] {
                    let cur = cost[(i0 - 1) * m + (j - 1)] - u[i0] - v[j];
                    if cur < minv[j] {
                        minv[j] = cur;
                        way[j] = j0;
                    }
                    if minv[j] < delta {
                        delta = minv[j];
                        j1 = j;
                    }
                }
            }
            for j in 0..=m {
                if used[j] {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            if p[j0] == 0 {
                break;
            }
        }
        loop {
            let j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut assign = vec![usize::MAX; n];
    for j in 1..=m {
        if p[j] != 0 {
            assign[p[j] - 1] = j - 1;
        }
    }
    assign
}

struct Clock {
    last_mono: Instant,
    last_wall_ok: bool,
    checks: u64,
    backwards: u64,
    wall_errors: u64,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            last_mono: Instant::now(),
            last_wall_ok: true,
            checks: 0,
            backwards: 0,
            wall_errors: 0,
        }
    }

    fn check(&mut self) {
        let now = Instant::now();
        if now < self.last_mono {
            self.backwards += 1;
        }
        self.last_mono = now;
        // Wall time may legitimately jump (NTP, another machine); only require it to be
        // after the epoch.
        self.last_wall_ok = SystemTime::now().duration_since(UNIX_EPOCH).is_ok();
        if !self.last_wall_ok {
            self.wall_errors += 1;
        }
        self.checks += 1;
    }
}

fn main() {
    let args = Args::from_env();
    let frames = args.size(12_000);
    let print_tracks = args.num("print-tracks", 4) as usize;
    let mut out = common::stdout();
    let mut clock = Clock::new();

    let mut scene = Scene {
        rng: Rng::new(host_seed()),
        objects: Vec::new(),
        next_id: 0,
        births: 0,
        deaths: 0,
    };
    for _ in 0..50 {
        scene.spawn();
    }
    let mut tracks: Vec<Track> = Vec::new();
    let mut next_track = 0u64;
    let mut sum = Fnv::new();
    let (mut total_dets, mut total_assigned, mut confirmed_ever) = (0u64, 0u64, 0u64);
    let (mut err_sum, mut err_n) = (0.0f64, 0u64);
    let mut max_tracks = 0usize;
    let mut id_switches = 0u64;
    let mut cost = Vec::new();

    writeln!(
        out,
        "tracker: frames={frames} dt={DT} area={AREA} reseed_every={RESEED_EVERY}"
    )
    .unwrap();
    for frame in 0..frames {
        clock.check();
        if frame > 0 && frame % RESEED_EVERY == 0 {
            // Fresh noise from the host: exercises random_get mid-run.
            scene.rng = Rng::new(host_seed());
            writeln!(out, "frame {frame} reseeded").unwrap();
        }
        scene.step();
        let dets = scene.detections();
        total_dets += dets.len() as u64;

        for t in tracks.iter_mut() {
            t.predict();
        }
        // Rows: tracks, columns: detections plus one "miss" column per track, so the
        // problem is always rectangular with rows <= columns.
        let n = tracks.len();
        let m = dets.len() + n;
        cost.clear();
        cost.resize(n * m, BIG);
        for (i, t) in tracks.iter().enumerate() {
            for (j, &z) in dets.iter().enumerate() {
                let d2 = t.mahalanobis2(z);
                if d2 < GATE {
                    cost[i * m + j] = d2;
                }
            }
            cost[i * m + dets.len() + i] = GATE;
        }
        let assign = if n > 0 {
            hungarian(&cost, n, m)
        } else {
            Vec::new()
        };
        let mut det_used = vec![false; dets.len()];
        for (i, t) in tracks.iter_mut().enumerate() {
            let j = assign[i];
            if j < dets.len() && cost[i * m + j] < GATE {
                t.update(dets[j]);
                det_used[j] = true;
                total_assigned += 1;
            } else {
                t.misses += 1;
            }
        }
        tracks.retain(|t| {
            if t.confirmed {
                t.misses < 6
            } else {
                t.misses < 2
            }
        });
        for (j, &z) in dets.iter().enumerate() {
            if !det_used[j] {
                tracks.push(Track::new(next_track, z));
                next_track += 1;
            }
        }
        max_tracks = max_tracks.max(tracks.len());

        // Position error of confirmed tracks against the nearest live object, and id
        // switches (a track whose nearest object changed).
        let mut confirmed = 0;
        for t in tracks.iter_mut().filter(|t| t.confirmed) {
            confirmed += 1;
            if t.hits == 3 && t.misses == 0 {
                confirmed_ever += 1;
            }
            let mut best = (f64::INFINITY, 0u64);
            for o in &scene.objects {
                let d = ((o.pos[0] - t.x[0]).powi(2) + (o.pos[1] - t.x[1]).powi(2)).sqrt();
                if d < best.0 {
                    best = (d, o.id);
                }
            }
            if best.0 < 50.0 {
                err_sum += best.0;
                err_n += 1;
                if t.truth.is_some_and(|id| id != best.1) {
                    id_switches += 1;
                }
                t.truth = Some(best.1);
            }
            sum.u64(t.id);
            for v in t.x {
                sum.f64(v);
            }
        }

        write!(
            out,
            "frame {frame} truth={} dets={} tracks={} confirmed={confirmed}",
            scene.objects.len(),
            dets.len(),
            tracks.len()
        )
        .unwrap();
        for t in tracks.iter().filter(|t| t.confirmed).take(print_tracks) {
            write!(
                out,
                " #{}({:.1},{:.1},{:.1},{:.1})",
                t.id, t.x[0], t.x[1], t.x[2], t.x[3]
            )
            .unwrap();
        }
        writeln!(out).unwrap();
    }
    clock.check();

    writeln!(
        out,
        "summary: objects_born={} objects_died={} detections={total_dets} assigned={total_assigned} tracks_started={next_track} confirmed={confirmed_ever} max_tracks={max_tracks} id_switches={id_switches} mean_err={:.4}",
        scene.births,
        scene.deaths,
        if err_n > 0 { err_sum / err_n as f64 } else { 0.0 }
    )
    .unwrap();
    if clock.backwards == 0 && clock.wall_errors == 0 {
        writeln!(out, "clock: monotonic ok").unwrap();
    } else {
        writeln!(
            out,
            "clock: FAILED backwards={} wall_before_epoch={} of {} checks",
            clock.backwards, clock.wall_errors, clock.checks
        )
        .unwrap();
    }
    writeln!(out, "checksum {:016x}", sum.value()).unwrap();
    out.flush().unwrap();
    drop(out);
    if clock.backwards != 0 || clock.wall_errors != 0 {
        std::process::exit(3);
    }
}
