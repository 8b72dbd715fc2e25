// Starling web UI: plain JavaScript, no build step, no dependencies.
//
// Every piece of user data is put on the page with textContent or attributes, never
// innerHTML, so a tweet cannot inject markup. The element ids and classes used here are a
// contract with the browser tests (see gateway/API.md, "Web UI element contract").
"use strict";

(function () {
  const TOKEN_KEY = "starling.token";
  const USER_KEY = "starling.user";
  const MAX_TWEET = 280;

  const $ = (id) => document.getElementById(id);

  const state = {
    token: null,
    user: null,
    stream: null,
    nextPage: "",
    recTimer: null,
    recInterval: null,
    streamRetry: null,
    arrivedDuringLoad: new Set(),
  };

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (state.token) headers.Authorization = "Bearer " + state.token;
    let resp;
    try {
      resp = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      throw new ApiError(0, "Cannot reach the server. Check your connection and try again.");
    }
    let data = null;
    const text = await resp.text();
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (e) {
        data = null;
      }
    }
    if (!resp.ok) {
      const message = data && typeof data.error === "string" ? data.error : resp.status + " " + resp.statusText;
      throw new ApiError(resp.status, message);
    }
    return data;
  }

  const enc = encodeURIComponent;

  // ---------------------------------------------------------------- helpers

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function setText(id, text) {
    $(id).textContent = text == null ? "" : String(text);
  }

  function showAppError(message) {
    const banner = $("app-error");
    banner.textContent = message || "";
    banner.hidden = !message;
  }

  // Handles an API failure in the signed-in app: an expired session signs out, anything
  // else is shown in `statusId` (or the page banner).
  function report(err, statusId) {
    if (err instanceof ApiError && err.status === 401) {
      signOut("Your session has ended. Please sign in again.");
      return;
    }
    const message = err && err.message ? err.message : String(err);
    if (statusId) {
      const node = $(statusId);
      node.textContent = message;
      node.classList.add("error");
    } else {
      showAppError(message);
    }
  }

  function status(id, message) {
    const node = $(id);
    node.classList.remove("error");
    node.textContent = message || "";
  }

  function relativeTime(iso) {
    const t = Date.parse(iso);
    if (Number.isNaN(t)) return "";
    const s = Math.max(0, Math.round((Date.now() - t) / 1000));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m";
    if (s < 86400) return Math.floor(s / 3600) + "h";
    return new Date(t).toLocaleDateString(undefined, { month: "short", day: "numeric" });
  }

  function compareIds(a, b) {
    // Ids are 64-bit decimal strings: compare by length, then lexically.
    if (a.length !== b.length) return a.length - b.length;
    return a < b ? -1 : a > b ? 1 : 0;
  }

  // ---------------------------------------------------------------- tweets

  function renderTags(container, tags) {
    container.replaceChildren();
    for (const tag of tags || []) {
      // The "#" is drawn by CSS: the element holds the tag itself.
      container.appendChild(el("span", "tag", tag));
    }
  }

  function renderTweet(t) {
    const node = el("article", "tweet");
    node.dataset.id = t.id;
    node.tabIndex = 0;
    node.setAttribute("aria-label", "Post by " + t.author);

    const head = el("header", "tweet-head");
    const avatar = el("span", "avatar", (t.author || "?").charAt(0).toUpperCase());
    avatar.setAttribute("aria-hidden", "true");
    head.appendChild(avatar);
    head.appendChild(el("span", "tweet-author", t.author));
    const time = el("time", "tweet-time", relativeTime(t.created_at));
    if (t.created_at) {
      time.dateTime = t.created_at;
      time.title = new Date(t.created_at).toLocaleString();
    }
    head.appendChild(time);
    node.appendChild(head);

    node.appendChild(el("p", "tweet-text", t.text));
    const tags = el("div", "tweet-tags");
    renderTags(tags, t.tags);
    node.appendChild(tags);

    const foot = el("footer", "tweet-foot");
    const like = el("button", "like-button", "♡ Like");
    like.type = "button";
    like.setAttribute("aria-pressed", "false");
    foot.appendChild(like);
    const details = el("span", "tweet-details", "Post " + t.id);
    foot.appendChild(details);
    node.appendChild(foot);
    return node;
  }

  async function engage(tweetId, kind) {
    try {
      await api("POST", "/api/engagements", { tweet_id: tweetId, kind });
      return true;
    } catch (err) {
      report(err);
      return false;
    }
  }

  // One delegated handler per list: clicking a tweet opens it (and records a click),
  // the like button records a like.
  function onTweetClick(event) {
    const tweet = event.target.closest(".tweet");
    if (!tweet) return;
    const like = event.target.closest(".like-button");
    if (like) {
      event.stopPropagation();
      if (like.getAttribute("aria-pressed") === "true") return;
      like.setAttribute("aria-pressed", "true");
      like.classList.add("liked");
      like.textContent = "♥ Liked";
      engage(tweet.dataset.id, "like").then((ok) => {
        if (!ok) {
          like.setAttribute("aria-pressed", "false");
          like.classList.remove("liked");
          like.textContent = "♡ Like";
        } else {
          scheduleRecommendations(1500);
        }
      });
      return;
    }
    openTweet(tweet);
  }

  function onTweetKey(event) {
    if (event.key !== "Enter" || event.target.closest(".like-button")) return;
    const tweet = event.target.closest(".tweet");
    if (tweet && event.target === tweet) openTweet(tweet);
  }

  function openTweet(tweet) {
    const wasOpen = tweet.classList.contains("open");
    tweet.classList.toggle("open");
    if (!wasOpen) engage(tweet.dataset.id, "click");
  }

  // Inserts a tweet into #timeline keeping newest first; null if it was already there.
  function placeInTimeline(t) {
    const list = $("timeline");
    let before = null;
    for (const existing of list.children) {
      const order = compareIds(existing.dataset.id, t.id);
      if (order === 0) return null;
      if (order < 0) {
        before = existing;
        break;
      }
    }
    const node = renderTweet(t);
    list.insertBefore(node, before);
    $("timeline-empty").hidden = true;
    return node;
  }

  // Only recent tweets may still be waiting for the tagger.
  function mayGetTags(t) {
    if (t.tags && t.tags.length) return false;
    const age = Date.now() - Date.parse(t.created_at);
    return !(age > 60000);
  }

  // Tags arrive shortly after a tweet (the tagger runs on an event): fetch them again.
  function refreshTagsLater(id, attempt) {
    if (attempt > 4) return;
    setTimeout(async () => {
      try {
        const t = await api("GET", "/api/tweets/" + enc(id));
        if (t.tags && t.tags.length) {
          for (const node of document.querySelectorAll(".tweet")) {
            if (node.dataset.id === id) renderTags(node.querySelector(".tweet-tags"), t.tags);
          }
        } else {
          refreshTagsLater(id, attempt + 1);
        }
      } catch (err) {
        /* tags are a nicety; the tweet is already shown */
      }
    }, 800 * Math.pow(2, attempt));
  }

  // ---------------------------------------------------------------- timeline

  async function loadTimeline(more) {
    const refresh = $("timeline-refresh");
    refresh.disabled = true;
    // Entries the stream delivers while this page loads must survive the reload below.
    if (!more) state.arrivedDuringLoad = new Set();
    const arrived = state.arrivedDuringLoad;
    const user = state.user;
    try {
      const token = more ? state.nextPage : "";
      const page = await api(
        "GET",
        "/api/users/" + enc(user) + "/timeline?page_size=30" + (token ? "&page_token=" + enc(token) : "")
      );
      if (state.user !== user) return; // signed out meanwhile
      const tweets = page.tweets || [];
      if (!more) {
        const keep = new Set(tweets.map((t) => t.id));
        for (const node of [...$("timeline").children]) {
          if (!keep.has(node.dataset.id) && !arrived.has(node.dataset.id)) node.remove();
        }
      }
      for (const t of tweets) {
        if (placeInTimeline(t) && mayGetTags(t)) refreshTagsLater(t.id, 0);
      }
      state.nextPage = page.next_page_token || "";
      $("timeline-more").hidden = !state.nextPage;
      $("timeline-empty").hidden = $("timeline").children.length > 0;
      showAppError("");
    } catch (err) {
      report(err);
    } finally {
      refresh.disabled = false;
    }
  }

  async function openStream() {
    closeStream();
    const live = $("live-status");
    // EventSource cannot send an Authorization header: a short-lived stream ticket goes in
    // the URL instead of the token.
    let ticket;
    try {
      ticket = (await api("POST", "/api/stream-ticket")).ticket;
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) {
        report(err);
        return;
      }
      live.textContent = "reconnecting";
      live.classList.remove("on");
      clearTimeout(state.streamRetry);
      state.streamRetry = setTimeout(() => {
        if (state.user && !state.stream) openStream();
      }, 3000);
      return;
    }
    if (!state.user || state.stream) return;
    const source = new EventSource(
      "/api/users/" + enc(state.user) + "/timeline/stream?ticket=" + enc(ticket)
    );
    state.stream = source;
    source.addEventListener("open", () => {
      live.textContent = "live";
      live.classList.add("on");
    });
    source.addEventListener("error", () => {
      live.textContent = "reconnecting";
      live.classList.remove("on");
      // The browser retries dropped connections itself, but gives up after an error
      // answer (a service briefly unavailable): then start over a little later.
      if (source.readyState === EventSource.CLOSED && state.stream === source) {
        clearTimeout(state.streamRetry);
        state.streamRetry = setTimeout(() => {
          if (state.user && state.stream === source) {
            openStream();
            loadTimeline(false);
          }
        }, 3000);
      }
    });
    source.addEventListener("tweet", (event) => {
      let t;
      try {
        t = JSON.parse(event.data);
      } catch (e) {
        return;
      }
      state.arrivedDuringLoad.add(t.id);
      const node = placeInTimeline(t);
      if (node) {
        node.classList.add("fresh");
        setTimeout(() => node.classList.remove("fresh"), 2000);
        if (mayGetTags(t)) refreshTagsLater(t.id, 0);
      }
    });
  }

  function closeStream() {
    clearTimeout(state.streamRetry);
    if (state.stream) {
      state.stream.close();
      state.stream = null;
    }
    const live = $("live-status");
    live.textContent = "offline";
    live.classList.remove("on");
  }

  // ---------------------------------------------------------------- recommendations

  async function loadRecommendations() {
    try {
      const user = state.user;
      if (!user) return;
      const data = await api("GET", "/api/users/" + enc(user) + "/recommendations?limit=10");
      if (state.user !== user) return;
      const list = $("recommendations");
      list.replaceChildren();
      for (const item of data.items || []) {
        if (!item.tweet) continue;
        const rec = el("div", "recommendation");
        rec.appendChild(renderTweet(item.tweet));
        // Reasons are the tags that matched the user's interests, strongest first; a
        // pick without any is a popular post.
        const reasons = el("div", "reasons");
        const why = item.reasons || [];
        reasons.appendChild(el("span", "reasons-label", why.length ? "Because you like" : "Why:"));
        for (const reason of why) reasons.appendChild(el("span", "reason reason-tag", reason));
        if (!why.length) reasons.appendChild(el("span", "reason", "Popular right now"));
        rec.appendChild(reasons);
        list.appendChild(rec);
      }
      $("recommendations-empty").hidden = list.children.length > 0;
    } catch (err) {
      report(err);
    }
  }

  function scheduleRecommendations(delay) {
    clearTimeout(state.recTimer);
    state.recTimer = setTimeout(loadRecommendations, delay);
  }

  // ---------------------------------------------------------------- profile, topics

  async function loadProfile() {
    try {
      const u = await api("GET", "/api/users/" + enc(state.user));
      setText("stat-followers", u.followers);
      setText("stat-following", u.following);
    } catch (err) {
      report(err);
    }
  }

  async function loadTopics() {
    try {
      const data = await api("GET", "/api/tags");
      const box = $("topics");
      box.replaceChildren();
      for (const tag of data.tags || []) box.appendChild(el("span", "topic", tag));
    } catch (err) {
      /* topics are decoration; leave the panel empty */
    }
  }

  // ---------------------------------------------------------------- session

  function showSignedOut(message) {
    $("app").hidden = true;
    $("session").hidden = true;
    $("auth").hidden = false;
    setText("auth-error", message || "");
    $("auth-password").value = "";
    $("auth-user").focus();
  }

  function showSignedIn() {
    $("auth").hidden = true;
    $("app").hidden = false;
    $("session").hidden = false;
    setText("me", state.user);
    setText("profile-name", state.user);
    setText("profile-avatar", state.user.charAt(0).toUpperCase());
    showAppError("");
    status("post-status", "");
    status("follow-status", "");
    loadTimeline(false);
    openStream();
    loadRecommendations();
    loadProfile();
    loadTopics();
    clearInterval(state.recInterval);
    state.recInterval = setInterval(loadRecommendations, 30000);
  }

  function signOut(message) {
    closeStream();
    clearInterval(state.recInterval);
    clearTimeout(state.recTimer);
    state.token = null;
    state.user = null;
    try {
      localStorage.removeItem(TOKEN_KEY);
      localStorage.removeItem(USER_KEY);
    } catch (e) {
      /* storage unavailable: nothing to clear */
    }
    $("timeline").replaceChildren();
    $("recommendations").replaceChildren();
    $("timeline-more").hidden = true;
    showSignedOut(message);
  }

  async function authenticate(path) {
    const user = $("auth-user").value.trim();
    const password = $("auth-password").value;
    setText("auth-error", "");
    if (!user || !password) {
      setText("auth-error", "Enter a user name and a password.");
      return;
    }
    const buttons = [$("signin-button"), $("signup-button")];
    buttons.forEach((b) => (b.disabled = true));
    try {
      const session = await api("POST", path, { user, password });
      state.token = session.token;
      state.user = session.user;
      try {
        localStorage.setItem(TOKEN_KEY, session.token);
        localStorage.setItem(USER_KEY, session.user);
      } catch (e) {
        /* private mode: the session lasts until the page closes */
      }
      $("auth-password").value = "";
      showSignedIn();
    } catch (err) {
      setText("auth-error", err.message);
    } finally {
      buttons.forEach((b) => (b.disabled = false));
    }
  }

  async function restoreSession() {
    let token = null;
    let user = null;
    try {
      token = localStorage.getItem(TOKEN_KEY);
      user = localStorage.getItem(USER_KEY);
    } catch (e) {
      /* storage unavailable */
    }
    if (!token || !user) {
      showSignedOut();
      return;
    }
    state.token = token;
    state.user = user;
    try {
      const me = await api("GET", "/api/me");
      state.user = me.user;
      showSignedIn();
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) {
        signOut("Your session has ended. Please sign in again.");
      } else {
        // The server is unreachable or unwell: keep the session and show what we can.
        showSignedIn();
        showAppError(err.message);
      }
    }
  }

  // ---------------------------------------------------------------- actions

  async function post(event) {
    if (event) event.preventDefault();
    const box = $("post-text");
    const text = box.value;
    if (!text.trim()) {
      report(new Error("Write something first."), "post-status");
      return;
    }
    const button = $("post-button");
    button.disabled = true;
    status("post-status", "Posting…");
    try {
      await api("POST", "/api/tweets", { text });
      box.value = "";
      updateCounter();
      status("post-status", "Posted. Your followers will see it in a moment.");
    } catch (err) {
      report(err, "post-status");
    } finally {
      button.disabled = false;
    }
  }

  function updateCounter() {
    const left = MAX_TWEET - [...$("post-text").value].length;
    const counter = $("post-count");
    counter.textContent = String(left);
    counter.classList.toggle("low", left < 20);
  }

  async function changeFollow(follow) {
    const input = $("follow-user");
    const name = input.value.trim().replace(/^@/, "");
    if (!name) {
      report(new Error("Enter a user name."), "follow-status");
      return;
    }
    const buttons = [$("follow-button"), $("unfollow-button")];
    buttons.forEach((b) => (b.disabled = true));
    try {
      const result = follow
        ? await api("POST", "/api/follows", { followee: name })
        : await api("DELETE", "/api/follows/" + enc(name));
      let message;
      if (follow) message = result.changed ? "You now follow " + name + "." : "You already follow " + name + ".";
      else message = result.changed ? "You unfollowed " + name + "." : "You were not following " + name + ".";
      status("follow-status", message);
      input.value = "";
      loadProfile();
      // The timeline merges or drops the followee's posts in the background.
      setTimeout(() => loadTimeline(false), 700);
      scheduleRecommendations(1000);
    } catch (err) {
      report(err, "follow-status");
    } finally {
      buttons.forEach((b) => (b.disabled = false));
    }
  }

  // ---------------------------------------------------------------- wiring

  function init() {
    $("auth-form").addEventListener("submit", (e) => {
      e.preventDefault();
      authenticate("/api/signin");
    });
    $("signup-button").addEventListener("click", () => authenticate("/api/signup"));
    $("signout-button").addEventListener("click", () => {
      // Revokes the token on the server (every device of this account), then forgets it
      // here whether or not the server could be reached.
      api("POST", "/api/signout").catch(() => {});
      signOut();
    });

    $("post-form").addEventListener("submit", post);
    $("post-text").addEventListener("input", updateCounter);
    $("post-text").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) post(e);
    });

    $("follow-form").addEventListener("submit", (e) => {
      e.preventDefault();
      changeFollow(true);
    });
    $("unfollow-button").addEventListener("click", () => changeFollow(false));

    $("timeline-refresh").addEventListener("click", () => loadTimeline(false));
    $("timeline-more").addEventListener("click", () => loadTimeline(true));
    $("recommendations-refresh").addEventListener("click", loadRecommendations);

    for (const id of ["timeline", "recommendations"]) {
      $(id).addEventListener("click", onTweetClick);
      $(id).addEventListener("keydown", onTweetKey);
    }

    // Keep relative times fresh.
    setInterval(() => {
      for (const time of document.querySelectorAll(".tweet-time")) {
        if (time.dateTime) time.textContent = relativeTime(time.dateTime);
      }
    }, 30000);

    updateCounter();
    restoreSession();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
