//! The Redis token bucket (one Lua script) against the pure model it implements, on the stack's
//! real Redis.

use std::time::Duration;

use rulestream_aws::RedisLimiter;

fn limiter() -> RedisLimiter {
    rulestream_aws::install_crypto();
    let url =
        std::env::var("REDIS_URL").expect("REDIS_URL is set by localstack/env.sh (run `make e2e`)");
    // The local Redis speaks TLS only (rediss://, like ElastiCache with transit encryption).
    let ca = std::env::var("REDIS_CA_FILE")
        .ok()
        .map(|p| std::fs::read(p).expect("REDIS_CA_FILE is readable"));
    RedisLimiter::new(Some(&url), ca, None, "rs-e2e-limiter").expect("valid REDIS_URL")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_grants_its_burst_then_refuses_then_refills() {
    let l = limiter();
    let key = format!("bucket-{}", uuid::Uuid::new_v4());
    // 1 token per second, burst 5: a new bucket is full.
    let mut granted = 0;
    for _ in 0..8 {
        granted += usize::from(l.take(&key, 1.0, 5.0).await.expect("redis answers"));
    }
    assert_eq!(granted, 5, "a new bucket grants exactly its burst");
    assert!(!l.take(&key, 1.0, 5.0).await.expect("redis answers"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        l.take(&key, 1.0, 5.0).await.expect("redis answers"),
        "one token refilled after a second"
    );
    assert!(!l.take(&key, 1.0, 5.0).await.expect("redis answers"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_takers_never_get_more_than_the_burst() {
    let l = std::sync::Arc::new(limiter());
    let key = format!("bucket-{}", uuid::Uuid::new_v4());
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let l = std::sync::Arc::clone(&l);
        let key = key.clone();
        // A slow refill, so the 100 takes (well under a second) see at most one more token.
        set.spawn(async move { l.take(&key, 0.5, 20.0).await.expect("redis answers") });
    }
    let mut granted = 0;
    while let Some(r) = set.join_next().await {
        granted += usize::from(r.expect("task"));
    }
    assert!(
        (20..=21).contains(&granted),
        "granted {granted} of 100 with burst 20"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_is_an_error_not_a_grant() {
    let l = RedisLimiter::new(Some("redis://127.0.0.1:1"), None, None, "x").expect("valid url");
    // One failure fails its own call only; the second in a row starts the cool-down, during
    // which Redis is not asked at all.
    let first = l.take("k", 1.0, 1.0).await.expect_err("refused");
    assert!(!first.to_string().contains("cooling down"), "{first}");
    let second = l.take("k", 1.0, 1.0).await.expect_err("refused");
    assert!(!second.to_string().contains("cooling down"), "{second}");
    let third = l.take("k", 1.0, 1.0).await.expect_err("cooling down");
    assert!(third.to_string().contains("cooling down"), "{third}");
}
