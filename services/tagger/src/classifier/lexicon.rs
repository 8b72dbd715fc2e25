//! The lexicon: each topic's tags (base first) and its cues by weight class, as data. The
//! rules for reading it (cue syntax, weights, the synonym-pair convention) are in the
//! module docs of `classifier`; tuning the tagger is editing this file.

use super::Topic;

pub(crate) static TOPICS: &[Topic] = &[
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
