//! Many change signals made into few, without postponing any for long.

use std::time::Duration;

use futures::StreamExt;

/// Signals for `changes`, at most two per `window`: a change after a quiet window is signalled at
/// once (a lone revocation is rendered without waiting), and the changes that come within the window
/// after a signal make one more signal when it closes. A steady stream of changes is rendered once
/// per window, never postponed for as long as it lasts (kube-runtime's debounce restarts its wait on
/// each change, so changes less than its period apart would hold every render back until they pause).
pub fn coalesce(
    changes: impl futures::Stream<Item = ()> + Send + 'static,
    window: Duration,
) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(
        (changes.boxed(), false),
        move |(mut changes, open)| async move {
            if open {
                // A window since the last signal: gather what comes in it.
                let closes = tokio::time::sleep(window);
                tokio::pin!(closes);
                let (mut more, mut ended) = (false, false);
                loop {
                    tokio::select! {
                        () = &mut closes => break,
                        next = changes.next() => match next {
                            Some(()) => more = true,
                            None => { ended = true; break }
                        },
                    }
                }
                if more {
                    return Some(((), (changes, true)));
                }
                if ended {
                    return None;
                }
            }
            changes.next().await?;
            Some(((), (changes, true)))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_millis(100);

    #[tokio::test]
    async fn a_steady_stream_of_changes_still_lets_renders_through() {
        // A change every 10 ms, ten times faster than the window, for as long as the test runs:
        // a debounce would never fire; the window fires about every 100 ms.
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let feeder = tokio::spawn(async move {
            while tx.unbounded_send(()).is_ok() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let signals = coalesce(rx, WINDOW).take(3).count();
        let count = tokio::time::timeout(Duration::from_secs(20), signals).await;
        feeder.abort();
        assert_eq!(count, Ok(3), "renders held back while changes kept coming");
    }

    #[tokio::test]
    async fn changes_within_one_window_make_one_signal_at_once_and_one_when_it_closes() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        for _ in 0..100 {
            tx.unbounded_send(()).unwrap();
        }
        drop(tx);
        assert_eq!(coalesce(rx, WINDOW).count().await, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_change_is_signalled_at_once_and_the_next_after_a_quiet_window_too() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        // Polled all the time, as the controller polls it.
        let (seen, mut signals) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(coalesce(rx, WINDOW).for_each(move |()| {
            let _ = seen.send(tokio::time::Instant::now());
            futures::future::ready(())
        }));
        for _ in 0..2 {
            let sent = tokio::time::Instant::now();
            tx.unbounded_send(()).unwrap();
            let signalled = signals.recv().await.unwrap();
            assert_eq!(signalled - sent, Duration::ZERO, "a lone change waited");
            // Nothing more within the window: no second signal for it.
            tokio::time::sleep(WINDOW * 3).await;
            assert!(signals.try_recv().is_err(), "a signal with no change");
        }
    }
}
