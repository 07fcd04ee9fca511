//! The plan is a pure function of its config: the same seed gives the same
//! actions and scenarios; another seed gives another plan.

use tokenledger_simulator::plan::{PlanConfig, ScenarioKind, Step, make_plan};

fn cfg(seed: u64, benign_only: bool) -> PlanConfig {
    PlanConfig {
        seed,
        tenants: 2,
        seconds: 60.0,
        rate: 40.0,
        day_seconds: 60.0,
        benign_only,
        roaming: 0.0,
    }
}

#[test]
fn the_same_seed_gives_the_same_plan() {
    let a = make_plan(&cfg(42, false)).unwrap();
    let b = make_plan(&cfg(42, false)).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.fingerprint(), b.fingerprint());
    let c = make_plan(&cfg(43, false)).unwrap();
    assert_ne!(a.fingerprint(), c.fingerprint());
    assert_ne!(a.actions, c.actions);
}

#[test]
fn every_scenario_kind_is_planned_once_per_tenant_within_the_run() {
    let p = make_plan(&cfg(7, false)).unwrap();
    for t in 0..2 {
        let mut kinds: Vec<ScenarioKind> = p.scenarios.iter().filter(|s| s.tenant == t).map(|s| s.kind).collect();
        kinds.sort();
        assert_eq!(kinds, ScenarioKind::ALL.to_vec(), "tenant {t}");
    }
    assert!(p.scenarios.iter().all(|s| s.at_ms >= 12_000 && s.at_ms <= 45_000));
    // Distinct attacker networks per tenant.
    for t in 0..2 {
        let mut nets: Vec<String> = p
            .scenarios
            .iter()
            .filter(|s| s.tenant == t)
            .map(|s| s.attacker.ip.rsplit_once('.').unwrap().0.to_owned())
            .collect();
        nets.sort();
        nets.dedup();
        assert_eq!(nets.len(), 6);
    }
    assert!(make_plan(&cfg(7, true)).unwrap().scenarios.is_empty());
}

#[test]
fn benign_actions_follow_the_rate_and_never_use_a_revoked_token() {
    let p = make_plan(&cfg(3, true)).unwrap();
    // Roughly rate × seconds requests (each 1–5 actions) plus the warm-up.
    assert!(
        p.actions.len() > 1_500 && p.actions.len() < 6_000,
        "{}",
        p.actions.len()
    );
    assert!(p.actions.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
    assert!(p.actions.iter().any(|a| matches!(a.step, Step::RotateKey)));
    assert!(p.actions.iter().any(|a| matches!(a.step, Step::Exchange { .. })));
    let mut revoked = std::collections::HashMap::new();
    for a in &p.actions {
        if let Step::Revoke { slot, .. } = a.step {
            revoked.insert(slot, a.at_ms);
        }
    }
    assert!(!revoked.is_empty());
    for a in &p.actions {
        if let Step::Use { slot, .. } = a.step
            && let Some(at) = revoked.get(&slot)
        {
            assert!(
                a.at_ms + 5_000 <= *at,
                "slot {slot} used at {} and revoked at {at}",
                a.at_ms
            );
        }
    }
}

#[test]
fn roaming_moves_some_user_requests_to_a_second_network_and_only_when_asked() {
    use tokenledger_simulator::plan::Holder;
    let roaming = |p: &tokenledger_simulator::Plan| {
        p.actions
            .iter()
            .filter(|a| {
                matches!(
                    a.step,
                    Step::Use {
                        holder: Holder::Roaming(_),
                        ..
                    }
                )
            })
            .count()
    };
    let tidy = make_plan(&cfg(7, true)).unwrap();
    assert_eq!(roaming(&tidy), 0);
    let mut c = cfg(7, true);
    c.roaming = 0.05;
    let moving = make_plan(&c).unwrap();
    let users = moving
        .actions
        .iter()
        .filter(|a| {
            matches!(
                a.step,
                Step::Use {
                    holder: Holder::User(_) | Holder::Roaming(_),
                    ..
                }
            )
        })
        .count();
    let n = roaming(&moving);
    // About 5 % of the users' own requests, and never all or none.
    assert!(n > 0 && n < users / 5, "{n} of {users}");
    assert_eq!(moving, make_plan(&c).unwrap());
    c.roaming = 1.5;
    assert!(make_plan(&c).is_err());
}
