//! The deterministic tweet classifier behind `TagText`: topic tags for a text, only ever
//! from [`crate::tags::TAGS`].
//!
//! # Why a lexicon
//!
//! The tagger runs on every tweet, must answer the same way on every replica and after every
//! restart, and must be explainable when a tag looks wrong. A hand-written lexicon per topic
//! does that with `std` only: no model weights to ship, no randomness, and a wrong tag is
//! traced to the cue that fired. The price is recall on texts that only name things (a film
//! title, a city) without any topic word; the labelled set in `data/labelled.tsv` measures it.
//!
//! # How a text is scored
//!
//! The text is split into lowercase words: punctuation separates words, apostrophes are dropped
//! (`can't` is `cant`, a possessive `'s` goes), each emoji is a word of its own, `@mentions` and
//! links are skipped. A hashtag contributes its body as a whole (for `#`-cues) and its words:
//! `#TravelTuesday` gives `travel` and `tuesday`; a one-word body such as `#bookclub` is also
//! searched for cue words inside it (at its start for cues of 4+ letters, anywhere for 6+).
//!
//! Every topic has cues in three weight classes, each cue scoring at most once per text however
//! often it occurs: *strong* (4 points: specialist or fan-identity terms such as `vinyl`,
//! `setlist`, `#foodie`), *cue* (2 points: plain topic words such as `album`) and *weak* (1
//! point: words that only suggest the topic, such as `listening`). A cue is a word (which also
//! matches its plural: `movie` matches `movies`, `puppy` matches `puppies`), a prefix ending in
//! `*` (`photograph*` matches `photography`, `photographer`, `photographs`), a phrase of such
//! words, a `#hashtag` body, or an emoji. Each word of the text counts once per topic: phrases
//! take their words before single-word cues do (`comic book` is one piece of evidence, not
//! `comic` plus `comic book`), and a topic's *against* phrases take theirs first, so that the
//! words of `hot dog` never count for pets, nor `35mm film` for movies.
//!
//! # The synonym-pair convention
//!
//! Several tags are near-synonyms (`music_lovers` / `music_aficionados`, `movie_lovers` /
//! `movie_buffs`, ...). Emitting them independently would make them noise; instead each
//! *topic* owns an ordered list of tags. The first is the **base** tag, emitted when the topic
//! scores at least 2 points (one plain cue, or two weak ones). The rest are **devotee** tags,
//! emitted as well from 4 points: two distinct plain cues, or one strong cue. In words: *a
//! tweet that clearly mentions a topic gets the base tag; a tweet that is emphatically about it
//! (two separate pieces of evidence, or specialist / fan-identity vocabulary) gets the devotee
//! tag too*, so a devotee tag never comes without its base tag. The labelled set
//! (`data/labelled.tsv`) is labelled by that rule as a reader applies it, counting evidence the
//! lexicon cannot see too (a film title, a city), which is what its recall measures.
//!
//! | topic | base tag | devotee tag |
//! |---|---|---|
//! | movies | `movie_lovers` | `movie_buffs` |
//! | sports | `sports_fans` | `sports_enthusiasts` |
//! | music | `music_lovers` | `music_aficionados` |
//! | fashion | `fashion_lovers` | `fashion_followers` |
//! | food | `foodies` | `food_fanatics` |
//! | video games | `gamers` | `gamers_tribe` |
//! | travel | `travel_bugs` | `wanderlust` |
//! | technology | `tech_savvy` | `tech_geeks` |
//! | social media | `social_media_junkies` | `social_media_geeks` |
//! | arts and culture outings | `culture_vultures` | `culture_aficionados` |
//! | the outdoors | `outdoor_enthusiasts` | `outdoors_adventurers` |
//! | sustainability | `eco-friendly` | `green_living` |
//! | nature | `nature_lovers` | `nature_aficionados` |
//! | comics | `comic_lovers` | `comic_book_buffs` |
//! | home decor | `home_decor_lovers` | `interior_design_lovers` |
//!
//! (Home decor is not one of the article's obvious synonym pairs, but interior design is the
//! same interest taken further, so it follows the same rule.)
//!
//! Two tags of those families are *facets*, topics of their own rather than devotee tags,
//! because they describe something different rather than more of the same:
//! `adventure_seekers` (thrills: skydiving, rafting, summits, bucket lists) next to the outdoors,
//! and `eco_warriors` (activism: strikes, petitions, clean-ups) next to sustainability. Their
//! cues also count towards the neighbouring topic where that is true (a climate strike is also
//! about sustainability). Every other tag is a single-tag topic.
//!
//! Tags are ranked by score, the devotee tag right after its base tag, then by their position
//! in [`TAGS`]; at most [`MAX_TAGS`] are returned.

use std::sync::OnceLock;

use crate::tags::TAGS;

/// The most tags [`tag`] returns for one text.
pub const MAX_TAGS: usize = 5;

/// Points a topic needs for its base tag: one plain cue, or two weak ones.
const BASE_SCORE: i32 = 2;
/// Points a topic needs for its devotee tags too: two plain cues, or one strong cue.
const DEVOTEE_SCORE: i32 = 4;

const STRONG: i32 = 4;
const CUE: i32 = 2;
const WEAK: i32 = 1;

/// One topic: its tags (base first) and its cues, `|`-separated: three weight classes and
/// `against`, phrases whose words must not count for the topic (`hot dog` for pets).
struct Topic {
    tags: &'static [&'static str],
    strong: &'static str,
    cue: &'static str,
    weak: &'static str,
    against: &'static str,
}

impl Topic {
    /// The scoring cues with their weights, strongest first.
    fn cues(&self) -> impl Iterator<Item = (&'static str, i32)> {
        let class = |list: &'static str, weight: i32| {
            list.split('|')
                .filter(|cue| !cue.is_empty())
                .map(move |cue| (cue, weight))
        };
        class(self.strong, STRONG)
            .chain(class(self.cue, CUE))
            .chain(class(self.weak, WEAK))
    }

    fn compile(&self) -> Compiled {
        let multi = |cue: &str| cue.starts_with('#') || cue.contains(' ');
        let cues = self.cues().filter(|(cue, _)| multi(cue));
        let cues = cues.chain(self.cues().filter(|(cue, _)| !multi(cue)));
        Compiled {
            tags: self.tags,
            against: self
                .against
                .split('|')
                .filter(|cue| !cue.is_empty())
                .map(|cue| Cue::new(cue, 0))
                .collect(),
            cues: cues.map(|(cue, weight)| Cue::new(cue, weight)).collect(),
        }
    }
}

/// A [`Topic`] with its cues split once: `cues` holds the `#hashtag` and phrase cues first,
/// then the single words, each group strongest first.
struct Compiled {
    tags: &'static [&'static str],
    against: Vec<Cue>,
    cues: Vec<Cue>,
}

/// One cue, ready to match.
struct Cue {
    text: &'static str,
    weight: i32,
    /// For a phrase: its first word, the rest, and its length in words.
    phrase: Option<(&'static str, &'static str, usize)>,
}

impl Cue {
    fn new(text: &'static str, weight: i32) -> Self {
        let phrase = text
            .split_once(' ')
            .map(|(first, rest)| (first, rest, text.split(' ').count()));
        Cue {
            text,
            weight,
            phrase,
        }
    }
}

/// [`TOPICS`] compiled, once per process.
fn lexicon() -> &'static [Compiled] {
    static LEXICON: OnceLock<Vec<Compiled>> = OnceLock::new();
    LEXICON.get_or_init(|| TOPICS.iter().map(Topic::compile).collect())
}

static TOPICS: &[Topic] = &[
    Topic {
        tags: &["movie_lovers", "movie_buffs"],
        strong: "filmography|cinematography|cinephile|director cut|theatrical release|\
                 letterboxd|criterion|a24|film buff|film nerd|movie buff|#filmtwitter|\
                 screenplay|film festival",
        cue: "movie|film|cinema|cinemas|blockbuster|box office|sequel|prequel|remake|\
              oscar|academy award|imdb|screening|🎬|🎥|movie night|movie theater|\
              rom com|romcom|documentary|pixar|ghibli|mcu|director",
        weak: "popcorn|🍿|trailer|horror|sci fi|actor|actress|premiere|netflix|marvel|\
               soundtrack|red carpet|rewatch*",
        against: "35mm film|film camera|film photography|shot on film",
    },
    Topic {
        tags: &["sports_fans", "sports_enthusiasts"],
        strong: "season ticket|fantasy football|fantasy league|tailgat*|transfer window|\
                 champions league|world cup|super bowl|march madness|grand slam|box score",
        cue: "sport|football|soccer|basketball|baseball|hockey|tennis|rugby|cricket|golf|\
              nfl|nba|mlb|nhl|mls|uefa|premier league|playoff|play offs|championship|\
              referee|ref|umpire|touchdown|home run|slam dunk|stadium|game day|gameday|\
              quarterback|striker|extra time|final whistle|boxing|ufc|mma|formula 1|f1|\
              nascar|olympics|wimbledon|tour de france|league|⚽|🏀|🏈|⚾|🎾|🏒|🏉|🏟",
        weak: "match|game|team|season|goal|coach|penalty|halftime|derby|athlete|final|\
               fifa|🏆|winner|fans|pub",
        against: "video game|game night|board game|game of thrones|dating match",
    },
    Topic {
        tags: &["music_lovers", "music_aficionados"],
        strong: "vinyl|b side|setlist|discography|record store|bandcamp|mosh pit|ableton|\
                 fl studio|chord|voicings|music nerd|#nowplaying|album review",
        cue: "music|musical|song|album|playlist|tune|concert|singer|songwriter|lyrics|guitar|\
              piano|drum|violin|cello|saxophone|jazz|hip hop|kpop|k pop|edm|techno|\
              spotify|apple music|soundcloud|on repeat|new single|live music|music festival|\
              coachella|dj|banger|mixtape|synth|karaoke|singing|encore|headliner|\
              bass drop|🎶|🎵|🎸|🎹|🥁|🎤|🎷|🎺|🎻|🎼|🎛",
        weak: "listen*|band|gig|rap|rock|bass|producer|orchestra|symphony|opera|festival|\
               soundtrack|tour|🎧|sing|radio|beats",
        against: "",
    },
    Topic {
        tags: &["fashion_lovers", "fashion_followers"],
        strong: "fashion week|capsule wardrobe|couture|lookbook|fit check|met gala|#pfw|\
                 #ootd|ootd|streetwear|fashionista",
        cue: "fashion|outfit|jacket|jeans|denim|sneaker|shoe|heels|handbag|wardrobe|thrift*|\
              runway|red carpet|vogue|gucci|prada|chanel|dior|zara|earrings|jewelry|jewellery|\
              dress|tee|blazer|👗|👠|👜|👟|🧥|👒",
        weak: "style|closet|boots|vintage|designer|trend|fit|hoodie|t shirt|hoops|\
               accessories|makeup|secondhand|second hand",
        against: "dress code",
    },
    Topic {
        tags: &["foodies", "food_fanatics"],
        strong: "foodie|#foodporn|#foodstagram|tasting menu|michelin|street food|sourdough|\
                 food coma|five course|food fanatic",
        cue: "food|recipe|cook*|bak*|restaurant|brunch|delicious|tasty|yummy|cuisine|pizza|\
              pasta|ramen|sushi|taco|burger|curry|noodle|croissant|cake|dessert|steak|bbq|\
              barbecue|food truck|farmers market|avocado toast|soup|lasagna|dumpling|\
              fried chicken|brisket|pancake|waffle|flavor|flavour|pumpkin spice|meal prep*|\
              homemade pasta|salmon|shrimp|lobster|oyster|bagel|donut|doughnut|\
              ice cream|fries|nachos|burrito|kebab|falafel|pho|paella|risotto|pie|cookie|\
              bakery|ribs|🍜|🍕|🍔|🍣|🌮|🍝|🥐|🍰|🧁|🍩|🍳|🥗|🍱|🍲|🌶|🧀|🥟|🍛",
        weak: "dinner|lunch|breakfast|meal|chef|dish|bread|chocolate|cheese|wings|snack|\
               spicy|salad|homemade|crumb|pairing|avocado|toast|tomato|🍍|🍅|🥑|yum|\
               chicken|rice|pineapple|grocery|kitchen",
        against: "",
    },
    Topic {
        tags: &["gamers", "gamers_tribe"],
        strong: "speedrun*|dlc|patch notes|lan party|gamer|gaming pc|esports|e sports|\
                 ranked|boss fight",
        cue: "gaming|video game|videogame|console|ps5|ps4|playstation|xbox|nintendo|twitch|\
              fortnite|minecraft|valorant|league of legends|elden ring|zelda|mario kart|\
              pokemon|pokémon|call of duty|rpg|mmo|fps|gg|noob|respawn|multiplayer|\
              indie game|steam deck|playing fifa|🎮|🕹",
        weak: "game|mario|switch|steam|controller|loot|side quest|fifa|co op|board game|\
               game night|streaming|level up|shrines",
        against: "game of thrones",
    },
    Topic {
        tags: &["travel_bugs", "wanderlust"],
        strong: "wanderlust|digital nomad|#travelgram|passport stamp|solo travel*|\
                 backpacker|one way ticket|jet lag|jetlag",
        cue: "travel*|vacation|passport|flight|airport|carry on|luggage|suitcase|hostel|\
              abroad|road trip|itinerary|sightseeing|tourist|layover|airbnb|cruise|nomad|\
              overseas|trip|✈|🧳|🗺|🏝",
        weak: "fly|ticket|packing|hotel|resort|holiday|beach|bucket list|explore|exploring|\
               visit*|country|🌍|🌎|lisbon|paris|london|tokyo|japan|bali|italy|rome|\
               thailand|iceland|santorini|mexico|barcelona|vietnam|osaka|kyoto|new york",
        against: "fishing trip|guilt trip|ego trip",
    },
    Topic {
        tags: &["tech_savvy", "tech_geeks"],
        strong: "raspberry pi|gpu|cpu|mechanical keyboard|home server|open source|github|\
                 linux|machine learning|apple event|overclock*|homelab|kubernetes|\
                 tech nerd|tech geek",
        cue: "tech|technology|techie|gadget|laptop|smartphone|iphone|android|ipad|macbook|\
              computer|software|hardware|coding|code|coder|programming|programmer|developer|\
              python|javascript|ai|artificial intelligence|chatgpt|server|router|\
              smart home|vr|noise cancelling|blockchain|nft|saas|api|debug*|firmware|app|\
              pc|💻|⌨|🤖|🖥",
        weak: "keyboard|wifi|ram|chip|headphones|headset|crypto|startup|cloud|upgrade*|\
               update|data|nerd|phone|network|tesla|🎧",
        against: "",
    },
    Topic {
        tags: &["bookworms"],
        strong: "tbr|#booktok|#bookstagram|bibliophile|page turner|goodreads|book club|\
                 bookworm",
        cue: "book|novel|reading|reader|author|chapter|library|kindle|paperback|hardcover|\
              audiobook|bookstore|bookshop|literature|memoir|fiction|nonfiction|reread|\
              re read|📚|📖",
        weak: "read|poetry|fantasy|sequel|story|bedtime",
        against: "graphic novel|comic book|book a",
    },
    Topic {
        tags: &["drama_lovers"],
        strong: "playwright|curtain call|understudy|drama queen|soap opera|telenovela|\
                 kdrama|k drama",
        cue: "drama|theatre|theater|broadway|west end|musical|acting|audition*|rehearsal|\
              opening night|shakespeare|monologue|improv|the play|a play|school play|\
              spring play|🎭",
        weak: "stage|actor|actress|cast|performing",
        against: "movie theater|movie theatre",
    },
    Topic {
        tags: &["art_lovers"],
        strong: "watercolor|watercolour|oil painting|procreate|art gallery|art school|\
                 art history|rothko|van gogh|picasso|monet|frida kahlo",
        cue: "art|artist|artwork|painting|painter|drawing|sketch*|canvas|gallery|sculpture|\
              mural|street art|illustration|illustrator|pottery|ceramics|digital art|\
              louvre|moma|tate|🎨",
        weak: "paint|museum|exhibition|exhibit|portrait|✏|🖼|creative",
        against: "state of the art|martial art|gallery wall",
    },
    Topic {
        tags: &["finance_fanatics"],
        strong: "dividend|index fund|etf|401k|roth ira|ira|compound interest|net worth|\
                 passive income|financial independence|bull market|bear market",
        cue: "financ*|invest*|stock|stock market|portfolio|crypto|bitcoin|ethereum|btc|nft|\
              budget|savings|debt|loan|mortgage|credit score|trading|trader|forex|\
              wall street|inflation|interest rate|📈|📉",
        weak: "market|interest|money|paid off|spreadsheet|💰|💸|bank|rent",
        against: "in stock|farmers market|budget travel",
    },
    Topic {
        tags: &["social_media_junkies", "social_media_geeks"],
        strong: "algorithm|engagement rate|content strategy|analytics|#instagood|\
                 #followforfollow|#likeforlike|posting schedule|social media manager",
        cue: "social media|instagram|insta|ig|tiktok|twitter|facebook|snapchat|youtube|reel|\
              follower|viral|went viral|influencer|content creator|hashtag|selfie|\
              doomscroll*|link in bio|retweet|carousel|trending|photo dump|\
              going live",
        weak: "likes|creator|content|engagement|scroll*|feed|posting|posted|dm|views|thread|\
               🧵|stories|screen time|online|subscriber",
        against: "",
    },
    Topic {
        tags: &["culture_vultures", "culture_aficionados"],
        strong: "world heritage|unesco|season subscriber|culture vulture|local culture|\
                 philharmonic|art fair|arts festival",
        cue: "cultur*|museum|exhibition|exhibit|gallery|opera|ballet|symphony|orchestra|\
              heritage|tradition|theatre|theater|broadway|west end|poetry slam|\
              poetry reading|recital|louvre|moma|tate|smithsonian|dia de los muertos|\
              día de los muertos|diwali|lunar new year|carnival|film festival|\
              🩰|🏛",
        weak: "festival|architecture|cathedral|temple|ruins|language|🎭|poetry|concert|\
               shakespeare",
        against: "pop culture|company culture|gallery wall",
    },
    Topic {
        tags: &["pet_lovers"],
        strong: "fur baby|furbaby|dog mom|dog dad|cat mom|cat dad|dog park|pet parent|\
                 rescue dog|rescue cat|#dogsofinstagram|#catsofinstagram",
        cue: "dog|puppy|pup|pupper|doggo|cat|kitten|kitty|pet|vet|leash|hamster|rabbit|bunny|\
              parrot|goldfish|guinea pig|meow|woof|good boy|paw|🐶|🐱|🐕|🐈|🐾|🐩|🐹|🐰|🦜",
        weak: "adopt*|rescue|fetch|treats|litter|walkies",
        against: "hot dog|hot dogs|dog days",
    },
    Topic {
        tags: &["family_oriented"],
        strong: "parenting|family time|mom life|dad life|family dinner|school run|\
                 first steps|family oriented",
        cue: "family|kid|children|son|daughter|husband|wife|parent|grandma|grandpa|\
              grandmother|grandfather|granny|nana|toddler|newborn|sibling|cousin|niece|\
              nephew|little one|kindergarten|my boys|my girls|🍼",
        weak: "mom|mum|mother|dad|father|baby|brother|sister|aunt|uncle|child|bedtime|\
               wedding|anniversary|date night|grandparents",
        against: "dog mom|cat mom|plant mom|dog dad|cat dad|plant dad|fur baby|pet parent|\
                  plant parent",
    },
    Topic {
        tags: &["health_enthusiasts"],
        strong: "gut health|mental health|forest bathing|breathwork|cold plunge|probiotic*|\
                 bloodwork",
        cue: "health*|wellness|wellbeing|well being|meditat*|mindfulness|hydrat*|vitamin|\
              supplement|nutrition|self care|selfcare|checkup|check up|immune|detox|\
              blood pressure|cholesterol|yoga|macros|🧘",
        weak: "sleep*|fiber|fibre|sugar|therapy|doctor|journaling|skincare|protein|salad|\
               water|smoothie|felt better|feel better|🥗",
        against: "",
    },
    Topic {
        tags: &["history_lovers"],
        strong: "roman empire|archaeolog*|archeolog*|world war|cold war|civil war|\
                 ww1|ww2|wwi|wwii|history buff|history nerd",
        cue: "histor*|ancient|medieval|roman|egyptian|egypt|pharaoh|pyramid|castle|ruins|\
              relic|artifact|artefact|pompeii|viking|dynasty|battle of|genealogy|ancestry|\
              renaissance|#onthisday",
        weak: "war|century|empire|documentary|monument|revolution|dinosaur|museum",
        against: "browser history|search history|make history",
    },
    Topic {
        tags: &["DIY_crafts"],
        strong: "diy|glue gun|woodworking|macrame|scrapbook*|homebrew*|candle making",
        cue: "craft*|handmade|knit*|crochet|sew|sewing|quilt*|embroider*|woodwork|\
              upcycl*|etsy|pottery|repaint*|renovat*|home improvement|resin|pallet|\
              weekend project|🔨|🧶|🪡|🪚",
        weak: "homemade|ceramics|from scratch|built|build|myself|cosplay|tutorial|🧵|\
               cabinets|armor",
        against: "craft beer",
    },
    Topic {
        tags: &["photography_fanatics"],
        strong: "full frame|dslr|mirrorless|35mm|film camera|aperture|bokeh|lightroom|\
                 golden hour|astrophotograph*|shot on film",
        cue: "photograph*|camera|lens|shutter|exposure|shot on|tripod|fujifilm|leica|\
              nikon|photo walk|📸|📷",
        weak: "photo|pic|shots|portrait|canon|sony|editing|grain|keepers|\
               milky way|wildlife",
        against: "photo dump|wedding photographer",
    },
    Topic {
        tags: &["outdoor_enthusiasts", "outdoors_adventurers"],
        strong: "thru hik*|14er|backcountry|great outdoors|trailhead|sleeping bag|\
                 campsite|campground|bouldering|backpacking",
        cue: "hik*|trail|camp|camping|camper|campfire|tent|summit*|climb*|kayak*|canoe|\
              paddleboard*|fishing|outdoors|outdoor|wilderness|national park|ski|skiing|\
              snowboard*|surf|surfing|rafting|mountaineering|off grid|mountain biking|\
              stargazing|⛰|🏕|🥾|🧗|🎣|🛶|⛺|🏔",
        weak: "mountain|peak|miles|fire pit|smores",
        against: "price hike|rate hike|climbing the ladder|paper trail",
    },
    Topic {
        tags: &["adventure_seekers"],
        strong: "skydiv*|bungee|paraglid*|hang glid*|base jump*|free solo|shark cage|\
                 thrill seeker|cliff jump*|white water",
        cue: "adventur*|adrenaline|thrill|zipline|zip line|rafting|scuba|\
              bucket list|daredevil|expedition|mountaineering|thru hik*|14er|🪂",
        weak: "extreme|summit*|dive|diving|surfing|trek*|volcano|#yolo|scares|terrifying",
        against: "",
    },
    Topic {
        tags: &["car_lovers"],
        strong: "v8|v6|v12|track day|cars and coffee|car meet|car show|jdm|cold start|\
                 manual transmission|stick shift|horsepower|lap time*",
        cue: "car|engine|turbo|mechanic|oil change|change the oil|test drive|supercar|\
              sports car|porsche|ferrari|lamborghini|bmw|mustang|miata|civic|corvette|\
              exhaust|check engine|nascar|formula 1|f1|detailing|motorsport|dealership|mpg|\
              🏎|🏁",
        weak: "🚗|ev|hybrid|drift*|rev|wheels|garage|tesla|honda|toyota|drive|driving",
        against: "car free",
    },
    Topic {
        tags: &["eco-friendly", "green_living"],
        strong: "eco friendly|zero waste|plastic free|carbon footprint|no planet b|\
                 eco warrior|low waste|#plasticfree|#zerowaste",
        cue: "eco|sustainab*|recycl*|reusable|compost*|single use|environment*|climate|\
              solar|solar panel|renewable|public transport|secondhand|second hand|upcycl*|\
              fast fashion|biodegradable|heat pump|walkable|car free|greener|planet|\
              climate strike|climate action|beach cleanup|clean up|cleanup|fossil fuel|\
              save the planet|plastic pollution|deforestation|carbon accounting|♻",
        weak: "plastic|carbon|electric car|thrift*|bamboo|organic|\
               green|refill*|bike lane|🌱|🌍|🌎|farmers market|ev|bags|jars|trash",
        against: "carbon wheels|carbon fiber|carbon frame",
    },
    Topic {
        tags: &["eco_warriors"],
        strong: "climate strike|fridays for future|#fridaysforfuture|extinction rebellion|\
                 no planet b|eco warrior|climate activist",
        cue: "climate action|activis*|climate crisis|climate emergency|beach cleanup|\
              litter pick*|save the planet|fossil fuel|plastic pollution|deforestation|\
              destroying the planet|greta|petition|protest|cleanup|clean up",
        weak: "campaign|ban|climate|march|planet|🌍",
        against: "",
    },
    Topic {
        tags: &["nature_lovers", "nature_aficionados"],
        strong: "birdwatching|birding|stargazing|forest bathing|mother nature|humpback|\
                 northern lights|aurora|fall colors|fall colours|national park|wildflower*",
        cue: "nature|wildlife|forest|mountain|ocean|sunset|sunrise|waterfall|foliage|bird|\
              eagle|whale|milky way|glacier|wilderness|canyon|meadow|fresh air|butterfl*|\
              deer|scenery|🌲|🌳|🍂|🍁|🌊|🏔|🌄|🌅|🦅|🐋|🌸|🌻",
        weak: "woods|tree|lake|river|sea|beach|flowers|stars|desert|rain|storm|hike|hiking|\
               wild|landscape|view|🌿|fox|bees|sheep|leaves",
        against: "mountain bike|mountain biking",
    },
    Topic {
        tags: &["comic_lovers", "comic_book_buffs"],
        strong: "comic con|comiccon|first print|variant cover|bagged and boarded|\
                 back issue|free comic book day|dc comics|graphic novel|long box|lcs",
        cue: "comic|comic book|manga|manhwa|marvel|superhero|batman|superman|spiderman|\
              spider man|x men|wonder woman|avengers|cosplay|webcomic",
        weak: "dc|mcu|anime|issue",
        against: "comic relief|stand up comic",
    },
    Topic {
        tags: &["cycling_enthusiasts"],
        strong: "road bike|mountain bike|mountain biking|mtb|tour de france|gravel bike|\
                 century ride|velodrome|clipless|bikepacking|bike commute|cycling club",
        cue: "cycling|cyclist|bike|bicycle|biking|bike ride|bike lane|strava|giro|peloton|\
              fixie|🚴|🚲|🚵",
        weak: "ride|cadence|commute|commuting|flat tire|wheels|spin",
        against: "dirt bike|bike shed",
    },
    Topic {
        tags: &["vegan_advocates"],
        strong: "go vegan|veganism|veganuary|#vegan|animal rights|factory farming|\
                 cruelty free|plant based",
        cue: "vegan*|dairy free|meat free|meatless|seitan|beyond meat|impossible burger|\
              vegetarian",
        weak: "tofu|tempeh|oat milk|lentils|🌱|animals|protein",
        against: "",
    },
    Topic {
        tags: &["entrepreneurs"],
        strong: "entrepreneur*|seed round|series a|pitch deck|product hunt|y combinator|\
                 ycombinator|bootstrap*|side hustle|small business",
        cue: "startup|start up|founder|cofounder|co founder|ceo|revenue|mrr|b2b|\
              saas|shopify|etsy shop|venture capital|my own boss|investors|launched my|\
              quit my job|9 5",
        weak: "business|funding|pitch*|launch*|hiring|hire|customers|clients|🚀|vc|demo",
        against: "",
    },
    Topic {
        tags: &["TV_show_lovers"],
        strong: "binge watch*|season finale|showrunner|box set|docuseries|tv show|\
                 reality tv|reality show",
        cue: "tv|television|series|episode|finale|binge*|netflix|hbo|hulu|disney plus|\
              prime video|sitcom|spoiler|new season|anime|kdrama|k drama|soap opera|\
              cliffhanger|📺",
        weak: "show|season|rewatch*|streaming|pilot|watch party|the office",
        against: "series a",
    },
    Topic {
        tags: &["fitness_freaks"],
        strong: "leg day|macros|couch to 5k|#gymlife|#fitfam|personal best|personal record|\
                 new pr|deadlift*|bench press|crossfit|half marathon",
        cue: "gym|workout|work out|fitness|squat*|cardio|hiit|marathon|long run|jog*|\
              yoga|pilates|spin class|gains|reps|personal trainer|calisthenics|pushup*|\
              push up|treadmill|muscle|💪|🏋",
        weak:
            "lift*|pr|pb|5k|10k|running|ran|run|protein|sets|abs|plank|steps|training|no excuses|\
               🏃|strava|fit",
        against: "running late|running on|run out|ran out",
    },
    Topic {
        tags: &["wine_connoisseurs"],
        strong: "sommelier|tannin*|decant*|blind tasting|natural wine|corkage|wine tasting|\
                 wine pairing|tasting notes|notes of|barolo|red or white",
        cue: "wine*|vineyard|vino|merlot|cabernet|pinot|chardonnay|sauvignon|riesling|\
              malbec|chianti|rioja|prosecco|champagne|rosé|napa|bordeaux|cellar|🍷",
        weak: "🥂|🍾|vintage|burgundy|tuscany|pairing|tasting|glass of|cheers",
        against: "",
    },
    Topic {
        tags: &["home_decor_lovers", "interior_design_lovers"],
        strong: "interior design|interior designer|home decor|mid century|japandi|terrazzo|\
                 gallery wall|accent wall|room makeover|floor plan|home tour",
        cue: "decor|décor|interiors|living room|furniture|throw pillow|rug|wallpaper|\
              makeover|ikea|boho|renovation|reno|curtains|rearrang*|🛋",
        weak: "bedroom|sofa|couch|cushion|lamp|candle|shelf|shelves|paint|minimalist|\
               scandinavian|walls|cabinets|hallway|apartment|brass|velvet|tile|cozy|cosy|\
               🖼|layout|kitchen",
        against: "couch to 5k",
    },
    Topic {
        tags: &["plant_lovers"],
        strong: "monstera|pothos|fiddle leaf|plant mom|plant dad|plant lady|plant parent|\
                 green thumb|houseplant*|#plantsofinstagram",
        cue: "plant|succulent|fern|cactus|cacti|repot*|propagat*|garden*|seedling|\
              grow light|orchid|bonsai|new leaf|unfurl*|🪴|🌵",
        weak: "soil|compost|tomatoes|herbs|jungle|watering|cuttings|leaf|leaves|🌿|🌱",
        against: "plant based|power plant",
    },
];

/// The topic tags of `text`, best first: at most [`MAX_TAGS`], only ever from
/// [`TAGS`], and the same for the same text. Empty when no topic has enough evidence.
#[must_use]
pub fn tag(text: &str) -> Vec<&'static str> {
    let tokens = Tokens::new(text);
    if tokens.words.is_empty() {
        return Vec::new();
    }
    let mut covered = Vec::with_capacity(tokens.words.len());
    // (rank, index in TAGS): the base tag ranks at twice the topic score, a devotee tag one
    // below it, so it follows its base tag and precedes every topic with a lower score.
    let mut ranked: Vec<(i32, usize)> = Vec::new();
    for topic in lexicon() {
        let score = tokens.score(topic, &mut covered);
        if score < BASE_SCORE {
            continue;
        }
        for (position, name) in topic.tags.iter().enumerate() {
            let devotee = position > 0;
            if devotee && score < DEVOTEE_SCORE {
                break;
            }
            if let Some(index) = TAGS.iter().position(|t| t == name) {
                ranked.push((2 * score - i32::from(devotee), index));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    ranked
        .into_iter()
        .take(MAX_TAGS)
        .map(|(_, index)| TAGS[index])
        .collect()
}

/// A hashtag's body, lowercased, and where its words are in [`Tokens::words`].
struct Hashtag {
    body: String,
    first_word: usize,
    word_count: usize,
}

/// A text as the cues see it.
struct Tokens {
    /// Lowercase words in order (hashtag words included), and emoji one per word.
    words: Vec<String>,
    hashtags: Vec<Hashtag>,
}

impl Tokens {
    fn new(text: &str) -> Self {
        let mut tokens = Tokens {
            words: Vec::new(),
            hashtags: Vec::new(),
        };
        for chunk in text.split_whitespace() {
            if chunk.starts_with('@') || is_link(chunk) {
                continue;
            }
            let mut rest = chunk;
            while let Some(hash) = rest.find('#') {
                push_words(&rest[..hash], &mut tokens.words);
                let after = &rest[hash + 1..];
                let end = after
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                if end > 0 {
                    tokens.push_hashtag(&after[..end]);
                }
                rest = &after[end..];
            }
            push_words(rest, &mut tokens.words);
        }
        tokens
    }

    fn push_hashtag(&mut self, body: &str) {
        let first_word = self.words.len();
        split_camel_case(body, &mut self.words);
        self.hashtags.push(Hashtag {
            body: body.to_lowercase(),
            first_word,
            word_count: self.words.len() - first_word,
        });
    }

    /// The topic's score. Every piece of text counts at most once per topic: `against`
    /// phrases mask their words first, then `#hashtag` and phrase cues take theirs, then single
    /// words; a cue scores (once) if it occurs somewhere not yet taken.
    fn score(&self, topic: &Compiled, covered: &mut Vec<bool>) -> i32 {
        covered.clear();
        covered.resize(self.words.len(), false);
        for cue in &topic.against {
            self.find(cue, |start, len| covered[start..start + len].fill(true));
        }
        let mut score = 0;
        for cue in &topic.cues {
            let mut found = false;
            self.find(cue, |start, len| {
                let span = &mut covered[start..start + len];
                if !span.contains(&true) {
                    span.fill(true);
                    found = true;
                }
            });
            if found {
                score += cue.weight;
            }
        }
        score
    }

    /// Calls `found(first word, word count)` for every occurrence of the cue: a `#hashtag`
    /// body, a phrase, a word, a `prefix*` or an emoji. In a one-word hashtag (`#bookclub`)
    /// the cue may also occur inside the word.
    fn find(&self, cue: &Cue, mut found: impl FnMut(usize, usize)) {
        if let Some(body) = cue.text.strip_prefix('#') {
            for h in &self.hashtags {
                if word_matches(&h.body, body) {
                    found(h.first_word, h.word_count);
                }
            }
            return;
        }
        if let Some((first, rest, len)) = cue.phrase {
            for (start, word) in self.words.iter().enumerate() {
                if word_matches(word, first) && phrase_at(&self.words[start + 1..], rest) {
                    found(start, len);
                }
            }
        } else {
            for (at, word) in self.words.iter().enumerate() {
                if word_matches(word, cue.text) {
                    found(at, 1);
                }
            }
        }
        for h in &self.hashtags {
            if h.word_count == 1 && compound_contains(&h.body, cue.text) {
                found(h.first_word, 1);
            }
        }
    }
}

fn is_link(chunk: &str) -> bool {
    let lower = |prefix: &str| {
        chunk
            .get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
    };
    lower("http://") || lower("https://") || lower("www.")
}

/// Appends the words of `s`: runs of letters and digits, lowercased. Apostrophes inside a
/// word are dropped, a possessive `'s` with them; every emoji is a word of its own.
fn push_words(s: &str, words: &mut Vec<String>) {
    let mut word = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_alphanumeric() {
            word.extend(c.to_lowercase());
        } else if is_apostrophe(c) && !word.is_empty() {
            let mut ahead = chars.clone();
            let possessive = matches!(ahead.next(), Some('s' | 'S'))
                && !ahead.next().is_some_and(char::is_alphanumeric);
            if possessive {
                chars.next();
            }
        } else {
            flush(&mut word, words);
            if is_emoji(c) {
                words.push(c.to_string());
            }
        }
    }
    flush(&mut word, words);
}

/// Appends the words of a hashtag body: `TravelTuesday` and `travel_tuesday` give `travel`,
/// `tuesday`; `NYCMarathon` gives `nyc`, `marathon`; `foodie` and `PS5` stay one word.
fn split_camel_case(body: &str, words: &mut Vec<String>) {
    let mut word = String::new();
    let mut prev: Option<char> = None;
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '_' {
            flush(&mut word, words);
            prev = None;
            continue;
        }
        if let Some(p) = prev {
            let next_lower = chars.peek().is_some_and(|n| n.is_lowercase());
            if (p.is_lowercase() && c.is_uppercase())
                || (p.is_uppercase() && c.is_uppercase() && next_lower)
            {
                flush(&mut word, words);
            }
        }
        word.extend(c.to_lowercase());
        prev = Some(c);
    }
    flush(&mut word, words);
}

fn flush(word: &mut String, words: &mut Vec<String>) {
    if !word.is_empty() {
        words.push(std::mem::take(word));
    }
}

fn is_apostrophe(c: char) -> bool {
    matches!(c, '\'' | '\u{2019}' | '\u{02bc}')
}

/// Pictographs and symbols from the arrows block up; not variation selectors, joiners or
/// skin-tone modifiers, which only decorate the emoji before them.
fn is_emoji(c: char) -> bool {
    let code = u32::from(c);
    !c.is_alphanumeric()
        && code >= 0x2190
        && !(0xFE00..=0xFE0F).contains(&code)
        && !(0x1F3FB..=0x1F3FF).contains(&code)
        && !(0xE0000..=0xE007F).contains(&code)
        && code != 0x200D
        && code != 0x20E3
}

/// `word` or its plural (`-s`, `-es`, `-y` to `-ies`), or, for a cue ending in `*`, any word
/// starting with the rest.
fn word_matches(token: &str, cue: &str) -> bool {
    if let Some(prefix) = cue.strip_suffix('*') {
        return token.starts_with(prefix);
    }
    if token == cue {
        return true;
    }
    let Some(singular) = token.strip_suffix('s') else {
        return false;
    };
    singular == cue
        || singular.strip_suffix('e') == Some(cue)
        || singular
            .strip_suffix("ie")
            .is_some_and(|stem| cue.strip_suffix('y') == Some(stem))
}

/// Whether the phrase `cue` (words separated by single spaces) starts at `words[0]`.
fn phrase_at(words: &[String], cue: &str) -> bool {
    let mut words = words.iter();
    cue.split(' ')
        .all(|part| words.next().is_some_and(|w| word_matches(w, part)))
}

/// Whether a one-word hashtag body holds the cue (a phrase with its spaces removed): at its
/// start for cues of 4+ letters, anywhere for 6+, so `#bookclub` holds `book` and
/// `#naturephotography` holds `photograph*`, but `#carbon` does not hold `car`.
fn compound_contains(body: &str, cue: &str) -> bool {
    let cue = cue.strip_suffix('*').unwrap_or(cue);
    let letters = cue.chars().filter(|c| *c != ' ').count();
    let plain = cue.chars().all(|c| c.is_alphanumeric() || c == ' ');
    if !plain || letters < 4 || body.chars().count() <= letters {
        return false;
    }
    body.char_indices()
        .filter(|(start, _)| *start == 0 || letters >= 6)
        .any(|(start, _)| joined_prefix(&body[start..], cue))
}

/// Whether `s` starts with the words of `cue` written without spaces.
fn joined_prefix(s: &str, cue: &str) -> bool {
    let mut rest = s;
    for part in cue.split(' ') {
        match rest.strip_prefix(part) {
            Some(r) => rest = r,
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const SAMPLES: &[&str] = &[
        "Just finished a new novel. Can't wait to talk about it with my book club #nerdalert",
        "Just had an epic chill session with my squad listening to some of our favorite tunes #goodvibesonly",
        "Vinyl, setlists, guitar solos, movie nights, #foodie brunch, #TravelTuesday, gym, PS5, \
         bitcoin, my dog, my kids, museum, hiking, skydiving, sourdough, sunsets 🌅🎸📸",
        "Ugh, Monday again",
        "",
        "#",
        "@someone https://example.com/music/movies",
        "🍕🍕🍕 #PizzaNight",
        "It's the director's cut — can’t wait!!!",
    ];

    #[test]
    fn every_tag_belongs_to_exactly_one_topic() {
        let mut seen = HashSet::new();
        for topic in TOPICS {
            assert!(!topic.tags.is_empty());
            for tag in topic.tags {
                assert!(TAGS.contains(tag), "{tag} is not in TAGS");
                assert!(seen.insert(*tag), "{tag} is in two topics");
            }
        }
        assert_eq!(seen.len(), TAGS.len(), "some tag of TAGS has no topic");
    }

    #[test]
    fn cues_are_normalised() {
        for topic in TOPICS {
            for (cue, _) in topic.cues() {
                assert!(!cue.is_empty(), "empty cue in {:?}", topic.tags);
                assert_eq!(cue, cue.to_lowercase(), "cues are lowercase");
                assert_eq!(cue, cue.trim(), "cue {cue:?} has outer spaces");
                assert!(!cue.contains("  "), "cue {cue:?} has a double space");
                assert!(
                    !cue.contains('\u{fe0f}') && !cue.contains('\u{200d}'),
                    "{cue:?}"
                );
                assert!(
                    !cue.contains(['-', '\'', '\u{2019}']),
                    "cue {cue:?} is not split"
                );
                // A cue must read as the tokenizer writes words, or it could never match.
                let bare = cue.trim_start_matches('#').trim_end_matches('*');
                let words = Tokens::new(bare).words;
                if cue.starts_with('#') {
                    assert_eq!(words, [bare], "hashtag cue {cue:?}");
                } else {
                    assert_eq!(words.join(" "), bare, "cue {cue:?}");
                }
            }
            for cue in topic.against.split('|').filter(|c| !c.is_empty()) {
                assert!(cue.contains(' '), "against cue {cue:?} must be a phrase");
                assert_eq!(Tokens::new(cue).words.join(" "), cue, "against cue {cue:?}");
            }
        }
    }

    #[test]
    fn no_phrase_is_lighter_than_a_word_it_contains() {
        // Phrases take their words first, so a lighter phrase would hide a heavier word.
        for topic in TOPICS {
            for (phrase, phrase_weight) in topic.cues().filter(|(c, _)| c.contains(' ')) {
                let words = Tokens::new(phrase);
                for (word, weight) in topic.cues().filter(|(c, _)| !c.contains(' ')) {
                    if words.words.iter().any(|w| word_matches(w, word)) {
                        assert!(phrase_weight >= weight, "{phrase:?} hides {word:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn only_tags_from_the_list_at_most_five_no_duplicates() {
        for text in SAMPLES {
            let tags = tag(text);
            assert!(tags.len() <= MAX_TAGS, "{text}: {tags:?}");
            assert!(tags.iter().all(|t| TAGS.contains(t)), "{text}: {tags:?}");
            let distinct: HashSet<_> = tags.iter().collect();
            assert_eq!(distinct.len(), tags.len(), "{text}: {tags:?}");
        }
        assert_eq!(tag(SAMPLES[2]).len(), MAX_TAGS);
    }

    #[test]
    fn deterministic() {
        for text in SAMPLES {
            let first = tag(text);
            for _ in 0..3 {
                assert_eq!(tag(text), first);
            }
        }
    }

    #[test]
    fn empty_and_topicless_texts_have_no_tags() {
        for text in [
            "",
            "   ",
            "!!! ... ???",
            "#",
            "Ugh, Monday again",
            "Running late, traffic is insane",
            "Lost my keys again. Third time this week",
        ] {
            assert!(tag(text).is_empty(), "{text:?}: {:?}", tag(text));
        }
    }

    #[test]
    fn weak_evidence_alone_gives_no_tag() {
        assert!(tag("listening").is_empty());
        assert!(tag("What a game").is_empty());
        assert!(tag("My mom called").is_empty());
    }

    #[test]
    fn seed_examples() {
        let book = tag(
            "Just finished a new novel. Can't wait to talk about it with my book club #nerdalert",
        );
        assert!(book.contains(&"bookworms"), "{book:?}");
        let music = tag("Just had an epic chill session with my squad listening to some of our favorite tunes #goodvibesonly");
        assert!(music.contains(&"music_lovers"), "{music:?}");
    }

    #[test]
    fn hashtags_count_whole_and_as_words() {
        assert_eq!(tag("#foodie"), ["foodies", "food_fanatics"]);
        assert!(tag("Lunch #foodporn").contains(&"foodies"));
        assert!(tag("#TravelTuesday").contains(&"travel_bugs"));
        assert!(tag("#travel_tuesday").contains(&"travel_bugs"));
        assert!(tag("#bookclub tonight").contains(&"bookworms"));
        let camel = tag("#NaturePhotography");
        assert!(camel.contains(&"nature_lovers") && camel.contains(&"photography_fanatics"));
        let compound = tag("#naturephotography");
        assert!(compound.contains(&"photography_fanatics"), "{compound:?}");
        // Short cues are not looked for inside hashtags: no car in #carbon, no pet in #petite.
        assert!(tag("#carbon #petite #artichoke").is_empty());
    }

    #[test]
    fn stems_and_plurals() {
        for text in [
            "photographs",
            "a photographer",
            "photography",
            "photographing birds",
        ] {
            assert!(tag(text).contains(&"photography_fanatics"), "{text}");
        }
        assert_eq!(tag("movies"), ["movie_lovers"]);
        assert_eq!(tag("puppies"), ["pet_lovers"]);
        assert_eq!(tag("Hiking"), ["outdoor_enthusiasts"]);
        assert_eq!(tag("My dog's bed"), ["pet_lovers"]);
        // Not every word that starts like a cue is one.
        assert!(tag("I booked it").is_empty());
    }

    #[test]
    fn pairs_follow_the_convention() {
        // One plain cue: the base tag only.
        assert_eq!(tag("Going to a concert"), ["music_lovers"]);
        // Two distinct cues, or one strong cue: the devotee tag too, right after its base tag.
        assert_eq!(
            tag("Concert tonight, then a new album"),
            ["music_lovers", "music_aficionados"]
        );
        assert_eq!(
            tag("Found it on vinyl"),
            ["music_lovers", "music_aficionados"]
        );
        // The same cue twice is still one piece of evidence, and so is a phrase.
        assert_eq!(tag("movie movie movie"), ["movie_lovers"]);
        assert_eq!(tag("comic book"), ["comic_lovers"]);
    }

    #[test]
    fn against_phrases_mask_their_words() {
        assert!(tag("Grabbed a hot dog").is_empty());
        assert!(!tag("Shot this on 35mm film").contains(&"movie_lovers"));
        assert!(!tag("PS5 back in stock").contains(&"finance_fanatics"));
    }

    #[test]
    fn ranked_by_score_then_by_tag_order() {
        // Music has two cues (rank 8), pets one (rank 4); the devotee tag comes in between.
        assert_eq!(
            tag("My dog hates my new album and my guitar"),
            ["music_lovers", "music_aficionados", "pet_lovers"]
        );
        // Equal scores: the order of TAGS (movie_lovers before sports_fans).
        assert_eq!(
            tag("football then a movie"),
            ["movie_lovers", "sports_fans"]
        );
    }

    #[test]
    fn tokens_skip_mentions_links_and_decorations() {
        assert!(tag("@musiclover https://music.example/movies").is_empty());
        let tokens = Tokens::new("Can’t stop 🏃\u{200d}\u{2640}\u{fe0f} #NYCMarathon Mahler's 5th");
        assert_eq!(
            tokens.words,
            ["cant", "stop", "🏃", "\u{2640}", "nyc", "marathon", "mahler", "5th"]
        );
        assert_eq!(tokens.hashtags.len(), 1);
        assert_eq!(tokens.hashtags[0].body, "nycmarathon");
        assert_eq!(
            (tokens.hashtags[0].first_word, tokens.hashtags[0].word_count),
            (4, 2)
        );
    }
}
