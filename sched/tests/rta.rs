//! Response-time analysis against textbook results, and admission refusing what RTA finds
//! unschedulable — naming the task that misses and by how much.

use sched::rta::{self, RtaTask};
use sched::sim::{self, ExecModel, SimConfig};
use sched::{Priority, SchedError, Scheduler, ServerSpec, TaskSpec, Time};

/// Rate-monotonic priorities: shorter period = higher priority.
fn rm(set: &[(&str, Time, Time)]) -> Vec<RtaTask> {
    let mut periods: Vec<Time> = set.iter().map(|t| t.2).collect();
    periods.sort_unstable();
    set.iter()
        .map(|&(name, c, t)| RtaTask {
            name: name.into(),
            wcet: c,
            period: t,
            deadline: t,
            priority: Priority(
                (periods.len() - periods.iter().position(|&p| p == t).unwrap_or(0)) as u32,
            ),
        })
        .collect()
}

fn responses(tasks: &[RtaTask]) -> Vec<Option<Time>> {
    rta::response_times(tasks)
        .iter()
        .map(|r| r.response)
        .collect()
}

/// Buttazzo, *Hard Real-Time Computing Systems*, response-time analysis example:
/// τ1 (C 1, T 4), τ2 (2, 6), τ3 (3, 10) under RM; U = 0.883 is above the Liu & Layland bound
/// for 3 tasks (0.780) yet the set is schedulable:
/// R1 = 1; R2 = 2 + ⌈3/4⌉·1 = 3; R3: 3 → 3+1+2 = 6 → 3+2+2 = 7 → 3+2+4 = 9 → 3+3+4 = 10 → 10.
#[test]
fn buttazzo_example() {
    let set = rm(&[("t1", 1, 4), ("t2", 2, 6), ("t3", 3, 10)]);
    assert_eq!(responses(&set), vec![Some(1), Some(3), Some(10)]);
    assert!(rta::check(&set).is_ok());
}

/// Burns & Wellings, *Real-Time Systems and Programming Languages*: a (C 3, T 7),
/// b (3, 12), c (5, 20): Ra = 3; Rb = 3 + 3 = 6; Rc: 5 → 11 → 14 → 17 → 20 → 20.
#[test]
fn burns_wellings_example() {
    let set = rm(&[("a", 3, 7), ("b", 3, 12), ("c", 5, 20)]);
    assert_eq!(responses(&set), vec![Some(3), Some(6), Some(20)]);
    assert!(rta::check(&set).is_ok());
}

/// The classic set RM cannot schedule although U = 0.97 (Buttazzo's RM-versus-EDF
/// example): τ1 (2, 5), τ2 (4, 7). R2: 4 → 4 + 2 = 6 → 4 + 4 = 8 → 8 > 7: misses by 1.
/// The simulator confirms the miss is real: τ2's first job is still running at 7.
#[test]
fn rm_unschedulable_set_is_refused_naming_the_task() {
    let set = rm(&[("t1", 2, 5), ("t2", 4, 7)]);
    assert_eq!(responses(&set), vec![Some(2), Some(8)]);
    let err = rta::check(&set).unwrap_err();
    assert_eq!(
        err,
        SchedError::Unschedulable {
            task: "t2".into(),
            response: Some(8),
            deadline: 7
        }
    );
    assert_eq!(
        err.to_string(),
        "`t2` misses its deadline: worst-case response time 8 > deadline 7 (by 1)"
    );

    // Admission refuses the second task; with a tiny server at the lowest priority.
    let mut s = Scheduler::new(ServerSpec::sporadic(1, 1000, 1), 0).unwrap();
    s.admit(0, TaskSpec::periodic("t1", 2, 5, 3)).unwrap();
    let refused = s.admit(0, TaskSpec::periodic("t2", 4, 7, 2)).unwrap_err();
    assert!(
        matches!(refused, SchedError::Unschedulable { ref task, response: Some(8), deadline: 7 } if task == "t2")
    );
    assert_eq!(
        s.tasks().count(),
        1,
        "a refused task leaves the set unchanged"
    );

    // The miss is real. The simulator only runs admitted sets, so give t2 the period 8
    // (admitted: R2 = 8 <= 8); over [0, 8) nothing else changes, and its first job ends at
    // 8, one past the deadline 7 that RTA refused.
    let rt = sim::run(&SimConfig {
        server: ServerSpec::sporadic(1, 1000, 1),
        tasks: vec![
            TaskSpec::periodic("t1", 2, 5, 3),
            TaskSpec::periodic("t2", 4, 8, 2),
        ],
        arrivals: vec![],
        horizon: 8,
        exec: ExecModel::Wcet,
        overrun_max: 0,
        seed: 0,
    })
    .unwrap();
    let t2_done = rt
        .trace
        .iter()
        .filter(|seg| matches!(seg.who, sim::Who::Periodic { task, .. } if task.0 == 1))
        .map(|seg| seg.end)
        .max();
    assert_eq!(t2_done, Some(8));
}

/// The server enters RTA as a periodic task (Cs, Ts) at its priority. Buttazzo's set with
/// the server in τ2's place: server (2, 6) between τ1 (1, 4) and τ3 (3, 10): R3 = 10, admitted.
/// With Cs = 3: R3: 3 → 3+1+3 = 7 → 3+2+6 = 11 → 3+3+6 = 12 → 12 > 10: τ3 refused, by 2.
#[test]
fn server_is_analysed_as_a_periodic_task() {
    let mut s = Scheduler::new(ServerSpec::sporadic(2, 6, 2), 0).unwrap();
    s.admit(0, TaskSpec::periodic("t1", 1, 4, 3)).unwrap();
    s.admit(0, TaskSpec::periodic("t3", 3, 10, 1)).unwrap();
    let r: Vec<_> = s
        .response_times()
        .iter()
        .map(|r| (r.name.clone(), r.response))
        .collect();
    assert_eq!(
        r,
        vec![
            ("t1".to_string(), Some(1)),
            ("t3".to_string(), Some(10)),
            ("sporadic server".to_string(), Some(3)),
        ]
    );

    let mut bigger = Scheduler::new(ServerSpec::sporadic(3, 6, 2), 0).unwrap();
    bigger.admit(0, TaskSpec::periodic("t1", 1, 4, 3)).unwrap();
    let err = bigger
        .admit(0, TaskSpec::periodic("t3", 3, 10, 1))
        .unwrap_err();
    assert_eq!(
        err,
        SchedError::Unschedulable {
            task: "t3".into(),
            response: Some(12),
            deadline: 10
        }
    );

    // The overrun allowance counts as budget: Cs 2 + allowance 1 is the same as Cs 3.
    let mut allowed =
        Scheduler::new(ServerSpec::sporadic(2, 6, 2).with_overrun_allowance(1), 0).unwrap();
    allowed.admit(0, TaskSpec::periodic("t1", 1, 4, 3)).unwrap();
    assert!(allowed
        .admit(0, TaskSpec::periodic("t3", 3, 10, 1))
        .is_err());
}

/// Admitting a high-priority task can break a task already admitted: the error names the
/// one that misses, not the newcomer.
#[test]
fn refusal_names_the_task_that_misses() {
    let mut s = Scheduler::new(ServerSpec::sporadic(1, 100, 1), 0).unwrap();
    s.admit(0, TaskSpec::periodic("slow", 6, 10, 2)).unwrap();
    // fast (3, 5) on top: slow: 6 → 6 + 6 = 12 → 6 + 9 = 15 → 6 + 9 = 15 > 10.
    let err = s.admit(0, TaskSpec::periodic("fast", 3, 5, 3)).unwrap_err();
    assert_eq!(
        err,
        SchedError::Unschedulable {
            task: "slow".into(),
            response: Some(15),
            deadline: 10
        }
    );
}

/// Constrained deadline (D < T) and an unbounded case.
#[test]
fn constrained_deadlines_and_saturation() {
    // t2 (2, T 10, D 3) under t1 (2, 4): R2 = 2 + 2 = 4 > 3.
    let mut s = Scheduler::new(ServerSpec::sporadic(1, 100, 1), 0).unwrap();
    s.admit(0, TaskSpec::periodic("t1", 2, 4, 3)).unwrap();
    let err = s
        .admit(0, TaskSpec::periodic("t2", 2, 10, 2).with_deadline(3))
        .unwrap_err();
    assert_eq!(
        err,
        SchedError::Unschedulable {
            task: "t2".into(),
            response: Some(4),
            deadline: 3
        }
    );
    assert!(s
        .admit(0, TaskSpec::periodic("t2", 2, 10, 2).with_deadline(4))
        .is_ok());

    let set = rm(&[("a", 2, 4), ("b", 4, 8), ("c", 1, 16)]);
    let r = rta::response_times(&set);
    assert_eq!(r[1].response, Some(8));
    assert_eq!(r[2].response, None);
    let err = rta::check(&set).unwrap_err();
    assert_eq!(
        err,
        SchedError::Unschedulable {
            task: "c".into(),
            response: None,
            deadline: 16
        }
    );
    assert!(err.to_string().contains("unbounded"));
}

#[test]
fn invalid_input_is_refused_not_panicked_on() {
    let mut s = Scheduler::new(ServerSpec::sporadic(2, 10, 5), 0).unwrap();
    assert!(matches!(
        s.admit(0, TaskSpec::periodic("x", 0, 10, 1)),
        Err(SchedError::InvalidTask { .. })
    ));
    assert!(matches!(
        s.admit(0, TaskSpec::periodic("x", 5, 0, 1)),
        Err(SchedError::InvalidTask { .. })
    ));
    assert!(matches!(
        s.admit(0, TaskSpec::periodic("x", 5, 10, 1).with_deadline(20)),
        Err(SchedError::InvalidTask { .. })
    ));
    assert!(matches!(
        s.admit(0, TaskSpec::periodic("x", 1, 10, 5)),
        Err(SchedError::PriorityTaken { .. })
    ));
    assert!(matches!(
        Scheduler::new(ServerSpec::sporadic(11, 10, 5), 0),
        Err(SchedError::InvalidServer(_))
    ));
    assert!(matches!(
        Scheduler::new(ServerSpec::sporadic(1, 10, 5).with_max_repl(0), 0),
        Err(SchedError::InvalidServer(_))
    ));
    assert!(matches!(
        Scheduler::new(ServerSpec::sporadic(8, 10, 5).with_overrun_allowance(3), 0),
        Err(SchedError::Unschedulable { .. })
    ));
}

/// Spare capacity for the placement solver: shares, headroom, and the largest server
/// budget RTA would still admit (checked against admission itself).
#[test]
fn spare_capacity_matches_admission() {
    let mut s = Scheduler::new(ServerSpec::sporadic(2, 6, 2), 0).unwrap();
    s.admit(0, TaskSpec::periodic("t1", 1, 4, 3)).unwrap();
    s.admit(0, TaskSpec::periodic("t3", 3, 10, 1)).unwrap();
    let spare = s.spare_capacity();
    assert!((spare.server_share - 2.0 / 6.0).abs() < 1e-9);
    assert!((spare.periodic_utilisation - 0.55).abs() < 1e-9);
    assert!((spare.headroom - (1.0 - 0.55 - 2.0 / 6.0)).abs() < 1e-9);
    // Hand: Cs = 2 gives R3 = 10 (above), Cs = 3 gives 12: the largest is 2.
    assert_eq!(spare.max_server_budget, 2);

    let mut alone = Scheduler::new(ServerSpec::sporadic(2, 10, 2), 0).unwrap();
    alone.admit(0, TaskSpec::periodic("t", 2, 10, 1)).unwrap();
    let max = alone.spare_capacity().max_server_budget;
    let admits = |budget: Time| {
        Scheduler::new(ServerSpec::sporadic(budget, 10, 2), 0)
            .and_then(|mut x| x.admit(0, TaskSpec::periodic("t", 2, 10, 1)))
            .is_ok()
    };
    assert!(admits(max));
    assert!(!admits(max + 1));
    assert_eq!(max, 8);
}
