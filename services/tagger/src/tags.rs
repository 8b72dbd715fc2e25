//! The 50 tags a tweet may carry, verbatim from the seed article (including its mix of
//! case and the one hyphenated tag), in the article's order.

pub const TAGS: [&str; 50] = [
    "movie_lovers",
    "sports_fans",
    "music_lovers",
    "fashion_lovers",
    "foodies",
    "gamers",
    "wanderlust",
    "tech_savvy",
    "bookworms",
    "drama_lovers",
    "art_lovers",
    "finance_fanatics",
    "social_media_junkies",
    "culture_vultures",
    "pet_lovers",
    "family_oriented",
    "health_enthusiasts",
    "history_lovers",
    "DIY_crafts",
    "photography_fanatics",
    "outdoors_adventurers",
    "car_lovers",
    "green_living",
    "nature_lovers",
    "fashion_followers",
    "culture_aficionados",
    "travel_bugs",
    "comic_book_buffs",
    "eco-friendly",
    "cycling_enthusiasts",
    "vegan_advocates",
    "music_aficionados",
    "eco_warriors",
    "entrepreneurs",
    "movie_buffs",
    "adventure_seekers",
    "tech_geeks",
    "TV_show_lovers",
    "fitness_freaks",
    "outdoor_enthusiasts",
    "gamers_tribe",
    "wine_connoisseurs",
    "home_decor_lovers",
    "sports_enthusiasts",
    "social_media_geeks",
    "comic_lovers",
    "food_fanatics",
    "plant_lovers",
    "interior_design_lovers",
    "nature_aficionados",
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn fifty_distinct_tags() {
        let set: HashSet<_> = TAGS.iter().collect();
        assert_eq!(set.len(), 50);
        assert!(TAGS.contains(&"DIY_crafts") && TAGS.contains(&"eco-friendly"));
    }
}
