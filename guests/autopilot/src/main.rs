//! autopilot — a quadrotor flight-control loop, as a long-running, deterministic guest.
//!
//! Each tick (500 Hz) a rigid-body plant is integrated with RK4, noisy sensors are
//! synthesised from it with a seeded PRNG (gyro, accelerometer, barometer, magnetometer,
//! GPS), a complementary filter estimates attitude, per-axis Kalman filters estimate
//! position and velocity, and cascaded PID loops (position → velocity → attitude → rate,
//! plus altitude) produce four motor commands. Every `--print-every` ticks the commands
//! are printed; at the end a checksum over every command of every tick.
//!
//! Usage: autopilot [TICKS | --size TICKS] [--print-every N] [--exit-code N]

use common::{Args, Fnv, Rng};
use std::f64::consts::PI;
use std::io::Write;

const DT: f64 = 0.002;
const G: f64 = 9.81;
const MASS: f64 = 1.2;
const INERTIA: [f64; 3] = [0.011, 0.011, 0.021];
const ARM: f64 = 0.18;
const YAW_COEF: f64 = 0.016;
const MOTOR_MAX: f64 = 8.0;
const MOTOR_TAU: f64 = 0.02;
const DRAG: f64 = 0.25;

type V3 = [f64; 3];

fn add(a: V3, b: V3) -> V3 {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}
fn scale(a: V3, k: f64) -> V3 {
    [a[0] * k, a[1] * k, a[2] * k]
}
fn clamp(x: f64, lim: f64) -> f64 {
    x.max(-lim).min(lim)
}
fn wrap_angle(a: f64) -> f64 {
    let mut a = a % (2.0 * PI);
    if a > PI {
        a -= 2.0 * PI;
    } else if a < -PI {
        a += 2.0 * PI;
    }
    a
}

/// Body-to-world rotation for ZYX Euler angles (roll, pitch, yaw).
fn rotation(att: V3) -> [[f64; 3]; 3] {
    let (sr, cr) = att[0].sin_cos();
    let (sp, cp) = att[1].sin_cos();
    let (sy, cy) = att[2].sin_cos();
    [
        [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
        [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
        [-sp, cp * sr, cp * cr],
    ]
}
fn mul(r: &[[f64; 3]; 3], v: V3) -> V3 {
    [
        r[0][0] * v[0] + r[0][1] * v[1] + r[0][2] * v[2],
        r[1][0] * v[0] + r[1][1] * v[1] + r[1][2] * v[2],
        r[2][0] * v[0] + r[2][1] * v[1] + r[2][2] * v[2],
    ]
}
fn mul_t(r: &[[f64; 3]; 3], v: V3) -> V3 {
    [
        r[0][0] * v[0] + r[1][0] * v[1] + r[2][0] * v[2],
        r[0][1] * v[0] + r[1][1] * v[1] + r[2][1] * v[2],
        r[0][2] * v[0] + r[1][2] * v[1] + r[2][2] * v[2],
    ]
}
/// Body rates → Euler angle rates.
fn euler_rates(att: V3, w: V3) -> V3 {
    let (sr, cr) = att[0].sin_cos();
    let cp = att[1].cos();
    let tp = att[1].tan();
    [
        w[0] + sr * tp * w[1] + cr * tp * w[2],
        cr * w[1] - sr * w[2],
        (sr * w[1] + cr * w[2]) / cp,
    ]
}

#[derive(Clone, Copy)]
struct Plant {
    pos: V3,
    vel: V3,
    att: V3,
    rate: V3,
}

impl Plant {
    fn axpy(&self, d: &Plant, k: f64) -> Plant {
        Plant {
            pos: add(self.pos, scale(d.pos, k)),
            vel: add(self.vel, scale(d.vel, k)),
            att: add(self.att, scale(d.att, k)),
            rate: add(self.rate, scale(d.rate, k)),
        }
    }

    /// World-frame linear acceleration for a body thrust.
    fn accel(&self, thrust: f64, wind: V3) -> V3 {
        let r = rotation(self.att);
        let f = mul(&r, [0.0, 0.0, thrust / MASS]);
        [
            f[0] - DRAG / MASS * (self.vel[0] - wind[0]),
            f[1] - DRAG / MASS * (self.vel[1] - wind[1]),
            f[2] - G - DRAG / MASS * (self.vel[2] - wind[2]),
        ]
    }

    fn deriv(&self, thrust: f64, torque: V3, wind: V3) -> Plant {
        let w = self.rate;
        let [ix, iy, iz] = INERTIA;
        Plant {
            pos: self.vel,
            vel: self.accel(thrust, wind),
            att: euler_rates(self.att, w),
            rate: [
                (torque[0] - (iz - iy) * w[1] * w[2]) / ix,
                (torque[1] - (ix - iz) * w[0] * w[2]) / iy,
                (torque[2] - (iy - ix) * w[0] * w[1]) / iz,
            ],
        }
    }

    fn step_rk4(&mut self, thrust: f64, torque: V3, wind: V3) {
        let k1 = self.deriv(thrust, torque, wind);
        let k2 = self.axpy(&k1, DT / 2.0).deriv(thrust, torque, wind);
        let k3 = self.axpy(&k2, DT / 2.0).deriv(thrust, torque, wind);
        let k4 = self.axpy(&k3, DT).deriv(thrust, torque, wind);
        let mut s = self.axpy(&k1, DT / 6.0);
        s = s.axpy(&k2, DT / 3.0);
        s = s.axpy(&k3, DT / 3.0);
        s = s.axpy(&k4, DT / 6.0);
        s.att[2] = wrap_angle(s.att[2]);
        // The ground.
        if s.pos[2] < 0.0 {
            s.pos[2] = 0.0;
            s.vel[2] = s.vel[2].max(0.0);
        }
        *self = s;
    }
}

/// Two-state (position, velocity) Kalman filter driven by a measured acceleration.
#[derive(Clone, Copy)]
struct Kf2 {
    x: [f64; 2],
    p: [[f64; 2]; 2],
    q: f64,
}

impl Kf2 {
    fn new(q: f64) -> Kf2 {
        Kf2 {
            x: [0.0, 0.0],
            p: [[1.0, 0.0], [0.0, 1.0]],
            q,
        }
    }

    fn predict(&mut self, acc: f64) {
        let [pos, vel] = self.x;
        self.x = [pos + vel * DT + 0.5 * acc * DT * DT, vel + acc * DT];
        let p = self.p;
        // P = F P F^T + Q with F = [[1, dt], [0, 1]], Q from white acceleration noise.
        let p00 = p[0][0] + DT * (p[1][0] + p[0][1]) + DT * DT * p[1][1];
        let p01 = p[0][1] + DT * p[1][1];
        let p11 = p[1][1];
        let q = self.q;
        self.p = [
            [p00 + q * DT.powi(4) / 4.0, p01 + q * DT.powi(3) / 2.0],
            [p01 + q * DT.powi(3) / 2.0, p11 + q * DT * DT],
        ];
    }

    /// Scalar measurement of state component `i` with variance `r`.
    fn update(&mut self, i: usize, z: f64, r: f64) {
        let s = self.p[i][i] + r;
        let k = [self.p[0][i] / s, self.p[1][i] / s];
        let y = z - self.x[i];
        self.x[0] += k[0] * y;
        self.x[1] += k[1] * y;
        let p = self.p;
        for (a, row) in self.p.iter_mut().enumerate() {
            for (b, v) in row.iter_mut().enumerate() {
                *v = p[a][b] - k[a] * p[i][b];
            }
        }
    }
}

struct Pid {
    kp: f64,
    ki: f64,
    kd: f64,
    integ: f64,
    integ_lim: f64,
    prev: f64,
    dfilt: f64,
    out_lim: f64,
}

impl Pid {
    fn new(kp: f64, ki: f64, kd: f64, integ_lim: f64, out_lim: f64) -> Pid {
        Pid {
            kp,
            ki,
            kd,
            integ: 0.0,
            integ_lim,
            prev: 0.0,
            dfilt: 0.0,
            out_lim,
        }
    }

    fn step(&mut self, err: f64, dt: f64) -> f64 {
        self.integ = clamp(self.integ + err * dt, self.integ_lim);
        let d = (err - self.prev) / dt;
        self.prev = err;
        self.dfilt += 0.2 * (d - self.dfilt);
        clamp(
            self.kp * err + self.ki * self.integ + self.kd * self.dfilt,
            self.out_lim,
        )
    }
}

struct Sensors {
    gyro: V3,
    accel: V3,
    baro: Option<f64>,
    mag: Option<f64>,
    gps: Option<(V3, V3)>,
}

struct Estimator {
    att: V3,
    gyro_bias: V3,
    axes: [Kf2; 3],
}

impl Estimator {
    fn new() -> Estimator {
        Estimator {
            att: [0.0; 3],
            gyro_bias: [0.0; 3],
            axes: [Kf2::new(4.0), Kf2::new(4.0), Kf2::new(2.0)],
        }
    }

    fn step(&mut self, s: &Sensors) {
        let w = [
            s.gyro[0] - self.gyro_bias[0],
            s.gyro[1] - self.gyro_bias[1],
            s.gyro[2] - self.gyro_bias[2],
        ];
        let de = euler_rates(self.att, w);
        let a = s.accel;
        let roll_acc = a[1].atan2(a[2]);
        let pitch_acc = (-a[0]).atan2((a[1] * a[1] + a[2] * a[2]).sqrt());
        let roll = self.att[0] + de[0] * DT;
        let pitch = self.att[1] + de[1] * DT;
        // A multirotor's accelerometer sees thrust, not gravity, while it accelerates:
        // trust it only when the specific force is close to 1 g.
        let norm = (a[0] * a[0] + a[1] * a[1] + a[2] * a[2]).sqrt();
        let k = if (norm - G).abs() < 0.4 { 0.002 } else { 0.0 };
        // Slow gyro-bias learning from the disagreement with the accelerometer.
        self.gyro_bias[0] -= 0.2 * k * (roll_acc - roll);
        self.gyro_bias[1] -= 0.2 * k * (pitch_acc - pitch);
        self.att[0] = roll + k * (roll_acc - roll);
        self.att[1] = pitch + k * (pitch_acc - pitch);
        self.att[2] = wrap_angle(self.att[2] + de[2] * DT);
        if let Some(m) = s.mag {
            let e = wrap_angle(m - self.att[2]);
            self.att[2] = wrap_angle(self.att[2] + 0.05 * e);
            self.gyro_bias[2] -= 0.0002 * e;
        }
        // Specific force to world acceleration with the estimated attitude.
        let r = rotation(self.att);
        let f = mul(&r, a);
        let acc = [f[0], f[1], f[2] - G];
        for (kf, &u) in self.axes.iter_mut().zip(acc.iter()) {
            kf.predict(u);
        }
        if let Some(z) = s.baro {
            self.axes[2].update(0, z, 0.01);
        }
        if let Some((p, v)) = s.gps {
            for i in 0..2 {
                self.axes[i].update(0, p[i], 0.09);
                self.axes[i].update(1, v[i], 0.01);
            }
            self.axes[2].update(1, v[2], 0.02);
        }
    }

    fn pos(&self) -> V3 {
        [self.axes[0].x[0], self.axes[1].x[0], self.axes[2].x[0]]
    }
    fn vel(&self) -> V3 {
        [self.axes[0].x[1], self.axes[1].x[1], self.axes[2].x[1]]
    }
}

struct Controller {
    vel_xy: [Pid; 2],
    alt: Pid,
    climb: Pid,
    att: [Pid; 3],
    rate: [Pid; 3],
}

struct Command {
    thrust: f64,
    torque: V3,
    att_sp: V3,
}

impl Controller {
    fn new() -> Controller {
        Controller {
            vel_xy: [
                Pid::new(1.8, 0.4, 0.05, 2.0, 4.0),
                Pid::new(1.8, 0.4, 0.05, 2.0, 4.0),
            ],
            alt: Pid::new(1.2, 0.0, 0.0, 0.0, 2.5),
            climb: Pid::new(4.0, 1.5, 0.1, 3.0, 6.0),
            att: [
                Pid::new(5.0, 0.0, 0.0, 0.0, 4.0),
                Pid::new(5.0, 0.0, 0.0, 0.0, 4.0),
                Pid::new(3.0, 0.0, 0.0, 0.0, 2.0),
            ],
            rate: [
                Pid::new(0.2, 0.1, 0.002, 0.5, 1.0),
                Pid::new(0.2, 0.1, 0.002, 0.5, 1.0),
                Pid::new(0.12, 0.02, 0.0, 0.5, 0.5),
            ],
        }
    }

    fn step(&mut self, est: &Estimator, gyro: V3, wp: [f64; 4]) -> Command {
        let pos = est.pos();
        let vel = est.vel();
        // Position → velocity setpoint → acceleration setpoint.
        let mut vsp = [(wp[0] - pos[0]) * 0.9, (wp[1] - pos[1]) * 0.9];
        let n = (vsp[0] * vsp[0] + vsp[1] * vsp[1]).sqrt();
        if n > 3.0 {
            vsp = [vsp[0] * 3.0 / n, vsp[1] * 3.0 / n];
        }
        let ax = self.vel_xy[0].step(vsp[0] - vel[0], DT);
        let ay = self.vel_xy[1].step(vsp[1] - vel[1], DT);
        let climb_sp = self.alt.step(wp[2] - pos[2], DT);
        let az = self.climb.step(climb_sp - vel[2], DT);
        // Acceleration → attitude setpoint (small-angle, rotated into the heading frame).
        let (sy, cy) = est.att[2].sin_cos();
        let pitch_sp = clamp((ax * cy + ay * sy) / G, 0.35);
        let roll_sp = clamp((ax * sy - ay * cy) / G, 0.35);
        let att_sp = [roll_sp, pitch_sp, wp[3]];
        let tilt = (est.att[0].cos() * est.att[1].cos()).max(0.5);
        let thrust = MASS * (G + az) / tilt;
        // Attitude → rate setpoint → angular acceleration → torque.
        let mut torque = [0.0; 3];
        for i in 0..3 {
            let err = if i == 2 {
                wrap_angle(att_sp[i] - est.att[i])
            } else {
                att_sp[i] - est.att[i]
            };
            let rate_sp = self.att[i].step(err, DT);
            let w = gyro[i] - est.gyro_bias[i];
            torque[i] = self.rate[i].step(rate_sp - w, DT);
        }
        Command {
            thrust,
            torque,
            att_sp,
        }
    }
}

/// X-configuration mixer: body thrust and torques → four motor forces, saturated.
fn mix(c: &Command) -> [f64; 4] {
    let t = c.thrust / 4.0;
    let l = ARM * std::f64::consts::FRAC_1_SQRT_2;
    let r = c.torque[0] / (4.0 * l);
    let p = c.torque[1] / (4.0 * l);
    let y = c.torque[2] / (4.0 * YAW_COEF);
    [
        (t - r + p + y).clamp(0.0, MOTOR_MAX),
        (t + r - p + y).clamp(0.0, MOTOR_MAX),
        (t + r + p - y).clamp(0.0, MOTOR_MAX),
        (t - r - p - y).clamp(0.0, MOTOR_MAX),
    ]
}

/// Motor forces → body thrust and torques (inverse of `mix`).
fn unmix(m: &[f64; 4]) -> (f64, V3) {
    let l = ARM * std::f64::consts::FRAC_1_SQRT_2;
    (
        m[0] + m[1] + m[2] + m[3],
        [
            l * (-m[0] + m[1] + m[2] - m[3]),
            l * (m[0] - m[1] + m[2] - m[3]),
            YAW_COEF * (m[0] + m[1] - m[2] - m[3]),
        ],
    )
}

/// Waypoint schedule: a 12 m square at changing heights and headings, 8 s per leg.
fn waypoint(t: f64) -> [f64; 4] {
    const WPS: [[f64; 4]; 6] = [
        [0.0, 0.0, 5.0, 0.0],
        [12.0, 0.0, 6.0, 0.5],
        [12.0, 12.0, 8.0, 1.6],
        [0.0, 12.0, 6.0, 3.0],
        [0.0, 0.0, 4.0, -2.0],
        [6.0, 6.0, 10.0, -0.5],
    ];
    WPS[((t / 8.0) as usize) % WPS.len()]
}

fn main() {
    let args = Args::from_env();
    let ticks = args.size(1_200_000);
    let every = args.num("print-every", 250).max(1);
    let exit_code = args.num("exit-code", 0);
    let mut out = common::stdout();

    let mut rng = Rng::new(0xA070_9170);
    let mut plant = Plant {
        pos: [0.0; 3],
        vel: [0.0; 3],
        att: [0.0; 3],
        rate: [0.0; 3],
    };
    let gyro_bias = [0.02, -0.015, 0.01];
    let mut wind = [0.0f64; 3];
    let mut motors = [MASS * G / 4.0; 4];
    let mut est = Estimator::new();
    let mut ctl = Controller::new();
    let mut sum = Fnv::new();
    let mut max_err = 0.0f64;
    let mut sat_ticks = 0u64;

    writeln!(
        out,
        "autopilot: ticks={ticks} dt={DT} print_every={every} seed=0xA0709170"
    )
    .unwrap();
    for tick in 0..ticks {
        let t = tick as f64 * DT;
        // Wind: a slowly wandering gust (first-order Gauss–Markov).
        for w in wind.iter_mut() {
            *w += -0.05 * *w * DT + 0.4 * rng.gauss() * DT.sqrt();
        }
        // Sensors from the true state.
        let (thrust, _) = unmix(&motors);
        let r = rotation(plant.att);
        let acc = plant.accel(thrust, wind);
        let f = mul_t(&r, [acc[0], acc[1], acc[2] + G]);
        let gyro = [
            plant.rate[0] + gyro_bias[0] + 0.01 * rng.gauss(),
            plant.rate[1] + gyro_bias[1] + 0.01 * rng.gauss(),
            plant.rate[2] + gyro_bias[2] + 0.01 * rng.gauss(),
        ];
        let sensors = Sensors {
            gyro,
            accel: [
                f[0] + 0.05 * rng.gauss(),
                f[1] + 0.05 * rng.gauss(),
                f[2] + 0.05 * rng.gauss(),
            ],
            baro: (tick % 10 == 0).then(|| plant.pos[2] + 0.1 * rng.gauss()),
            mag: (tick % 10 == 5).then(|| wrap_angle(plant.att[2] + 0.02 * rng.gauss())),
            gps: (tick % 50 == 0).then(|| {
                (
                    [
                        plant.pos[0] + 0.3 * rng.gauss(),
                        plant.pos[1] + 0.3 * rng.gauss(),
                        plant.pos[2] + 0.5 * rng.gauss(),
                    ],
                    [
                        plant.vel[0] + 0.1 * rng.gauss(),
                        plant.vel[1] + 0.1 * rng.gauss(),
                        plant.vel[2] + 0.1 * rng.gauss(),
                    ],
                )
            }),
        };
        est.step(&sensors);
        let wp = waypoint(t);
        let cmd = ctl.step(&est, gyro, wp);
        let target = mix(&cmd);
        if target.iter().any(|&m| m <= 0.0 || m >= MOTOR_MAX) {
            sat_ticks += 1;
        }
        // First-order motor lag, then the plant.
        for (m, &tgt) in motors.iter_mut().zip(target.iter()) {
            *m += (tgt - *m) * (DT / MOTOR_TAU);
        }
        let (thrust, torque) = unmix(&motors);
        plant.step_rk4(thrust, torque, wind);

        for &m in &target {
            sum.f64(m);
        }
        let e = est.pos();
        let err = ((e[0] - plant.pos[0]).powi(2)
            + (e[1] - plant.pos[1]).powi(2)
            + (e[2] - plant.pos[2]).powi(2))
        .sqrt();
        if t > 1.0 {
            max_err = max_err.max(err);
        }
        if tick % every == 0 {
            writeln!(
                out,
                "tick {tick} t={t:.3} thr={:.4} sp=({:.4},{:.4},{:.4}) m=[{:.4},{:.4},{:.4},{:.4}] pos=({:.3},{:.3},{:.3}) est_err={err:.4}",
                cmd.thrust,
                cmd.att_sp[0],
                cmd.att_sp[1],
                cmd.att_sp[2],
                target[0],
                target[1],
                target[2],
                target[3],
                plant.pos[0],
                plant.pos[1],
                plant.pos[2],
            )
            .unwrap();
        }
    }
    for v in plant.pos.iter().chain(plant.att.iter()) {
        sum.f64(*v);
    }
    writeln!(
        out,
        "final pos=({:.4},{:.4},{:.4}) att=({:.4},{:.4},{:.4}) max_est_err={max_err:.4} saturated_ticks={sat_ticks}",
        plant.pos[0], plant.pos[1], plant.pos[2], plant.att[0], plant.att[1], plant.att[2]
    )
    .unwrap();
    writeln!(out, "checksum {:016x}", sum.value()).unwrap();
    out.flush().unwrap();
    drop(out);
    if exit_code != 0 {
        eprintln!("autopilot: exiting with requested code {exit_code}");
        std::process::exit(exit_code as i32);
    }
}
