//! `Db::call_combined` on PostgreSQL (skipped without `TESSERA_TEST_POSTGRES_URL`): calls made at once are
//! sent together, each caller gets its own answer, and a call the server refuses fails alone.

#![allow(clippy::unwrap_used)]

use tessera_test_harness::{backends, Backend, TestDb};

const FUNCTION: &str = "CREATE FUNCTION t_combined(jobs jsonb) RETURNS SETOF jsonb LANGUAGE plpgsql AS $fn$
DECLARE v jsonb;
BEGIN
  FOR v IN SELECT e.value FROM jsonb_array_elements(jobs) WITH ORDINALITY AS e(value, n) ORDER BY e.n LOOP
    INSERT INTO t_written (n) VALUES (CAST(v->>'n' AS BIGINT));
    IF CAST(v->>'fail' AS BOOLEAN) THEN
      RAISE EXCEPTION 'refused %', v->>'n';
    END IF;
    RETURN NEXT jsonb_build_object('n', v->'n', 'calls', jsonb_array_length(jobs));
  END LOOP;
END
$fn$";

#[tokio::test]
async fn combined_calls_answer_their_own_callers_and_a_refused_one_fails_alone() {
    let Some(admin) = backends().into_iter().find_map(|b| match b {
        Backend::Postgres(u) => Some(u),
        _ => None,
    }) else {
        eprintln!("no PostgreSQL server named; skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tdb = TestDb::create(&Backend::Postgres(admin), dir.path()).await;
    let db = tessera_db::Db::connect(&tdb.url, 4).await.unwrap();
    sqlx::query("CREATE TABLE t_written (n BIGINT NOT NULL)")
        .execute(db.pool())
        .await
        .unwrap();
    sqlx::query(FUNCTION).execute(db.pool()).await.unwrap();

    // Rounds 0 and 1: every call goes through; at least one call went with others. Rounds 2 to 4: call 7 is
    // refused, and only call 7.
    let mut together = false;
    for round in 0..5_i64 {
        let refused = if round >= 2 { Some(7) } else { None };
        let calls: Vec<_> = (0..16_i64)
            .map(|n| {
                let db = db.clone();
                tokio::spawn(async move {
                    let arg = format!(r#"{{"n": {n}, "fail": {}}}"#, Some(n) == refused);
                    // Keys in the reverse order of the calls: the batch reorders them, the answers follow.
                    let key = format!("{:02}", 15 - n);
                    (n, db.call_combined("t_combined", &key, arg).await)
                })
            })
            .collect();
        for c in calls {
            let (n, r) = c.await.unwrap();
            if Some(n) == refused {
                assert!(r.is_err(), "round {round}: the refused call succeeded: {r:?}");
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(&r.unwrap()).unwrap();
            assert_eq!(v["n"], n, "round {round}: another call's answer");
            together |= v["calls"].as_i64().unwrap() > 1;
        }
        // Every call written once per round, except the refused one: nothing of it stayed.
        let rows: Vec<(i64, i64)> = sqlx::query_as("SELECT n, COUNT(*) FROM t_written GROUP BY n ORDER BY n")
            .fetch_all(db.pool())
            .await
            .unwrap();
        let want: Vec<(i64, i64)> = (0..16)
            .map(|n| (n, if n == 7 { (round + 1).min(2) } else { round + 1 }))
            .collect();
        assert_eq!(rows, want, "round {round}");
    }
    assert!(together, "no two calls were ever sent together");
    db.close().await;
}
