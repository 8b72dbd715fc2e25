//! A synthetic social graph whose follower counts follow a power law, as measured social
//! graphs do: most accounts have a handful of followers, a few have a large share of
//! everyone. The load test needs that shape because it is what makes fan-out uneven: one
//! post by a popular account writes thousands of timelines, most write a few.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Users and who follows whom, by index into `users`.
pub struct Graph {
    pub users: Vec<String>,
    /// `(follower, followee)` pairs, no self-follows, no duplicates.
    pub follows: Vec<(u32, u32)>,
}

impl Graph {
    /// Follower count per user (index as in `users`).
    pub fn follower_counts(&self) -> Vec<u32> {
        let mut counts = vec![0u32; self.users.len()];
        for &(_, followee) in &self.follows {
            counts[followee as usize] += 1;
        }
        counts
    }
}

/// The name of user `i` in a graph of any size (sortable, valid for every service).
pub fn user_name(i: usize) -> String {
    format!("lu{i:07}")
}

/// `users` accounts, each following on average `per_user` others (uniformly 1 to
/// 2 * `per_user` - 1 of them). Followees are drawn with probability proportional to
/// 1 / rank (Zipf, exponent 1) over a shuffled ranking, so the most popular account is
/// followed by about a tenth of everyone at 10,000 users and the median by a few.
/// The same `seed` gives the same graph.
pub fn power_law(users: usize, per_user: usize, seed: u64) -> Graph {
    let mut rng = StdRng::seed_from_u64(seed);
    let names: Vec<String> = (0..users).map(user_name).collect();
    if users < 2 || per_user == 0 {
        return Graph {
            users: names,
            follows: Vec::new(),
        };
    }
    // rank -> user, so popularity is not tied to the name.
    let mut by_rank: Vec<u32> = (0..users as u32).collect();
    for i in (1..users).rev() {
        by_rank.swap(i, rng.random_range(0..=i));
    }
    // Cumulative Zipf weights over ranks, for a binary-search draw.
    let mut cdf = Vec::with_capacity(users);
    let mut total = 0.0f64;
    for rank in 0..users {
        total += 1.0 / (rank as f64 + 1.0);
        cdf.push(total);
    }
    let draw = |rng: &mut StdRng| -> u32 {
        let x = rng.random_range(0.0..total);
        let rank = cdf.partition_point(|&c| c <= x).min(users - 1);
        by_rank[rank]
    };
    let most = (2 * per_user - 1).min(users - 1);
    let mut follows = Vec::with_capacity(users * per_user);
    let mut chosen = Vec::new();
    for follower in 0..users as u32 {
        let want = rng.random_range(1..=most);
        chosen.clear();
        // Popular accounts are drawn again and again; give up on a follower after enough
        // repeats rather than loop (it then follows a few fewer).
        let mut tries = 0;
        while chosen.len() < want && tries < want * 20 {
            tries += 1;
            let followee = draw(&mut rng);
            if followee != follower && !chosen.contains(&followee) {
                chosen.push(followee);
            }
        }
        follows.extend(chosen.iter().map(|&f| (follower, f)));
    }
    Graph {
        users: names,
        follows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follower_counts_are_heavy_tailed() {
        let g = power_law(10_000, 10, 7);
        let mut counts = g.follower_counts();
        counts.sort_unstable();
        let median = counts[counts.len() / 2];
        let top = counts[counts.len() - 1];
        let edges = g.follows.len();
        // About 10 follows per user.
        assert!((80_000..120_000).contains(&edges), "{edges} edges");
        // A few accounts followed by a large share of everyone, most by a handful.
        assert!(top >= 500, "top account has {top} followers");
        assert!(median <= 10, "median account has {median} followers");
        assert!(top >= 50 * median.max(1), "top {top} vs median {median}");
    }

    #[test]
    fn no_self_follows_or_duplicates_and_deterministic() {
        let g = power_law(500, 5, 1);
        let mut pairs = g.follows.clone();
        assert!(pairs.iter().all(|(a, b)| a != b));
        pairs.sort_unstable();
        pairs.dedup();
        assert_eq!(pairs.len(), g.follows.len());
        assert_eq!(power_law(500, 5, 1).follows, g.follows);
        assert_ne!(power_law(500, 5, 2).follows, g.follows);
    }

    #[test]
    fn tiny_graphs_do_not_panic() {
        assert!(power_law(0, 10, 1).follows.is_empty());
        assert!(power_law(1, 10, 1).follows.is_empty());
        let g = power_law(2, 10, 1);
        assert!(g.follows.len() <= 2);
    }
}
