// A conflict rule in JavaScript, built with componentize-js in its default settings:
//   componentize-js --wit wit --world-name resolver-plugin -o longer-wins.wasm rule.js
// Of the sides' texts the longest wins, over every side of the sync (a tie goes to the side
// named first); anything else is left to a person. A field named "boom" makes it throw, to
// show that a rule that throws decides nothing: its conflicts wait for a person, with the
// thrown message.
export const resolver = {
  resolve(conflicts) {
    return conflicts.map((c) => {
      if (c.field === "boom") {
        throw new Error(`no rule for ${c.field} (thrown on purpose)`);
      }
      // Every side in the sync's order: left, right, then the third side and on.
      const sides = [c.left, c.right, ...c.others];
      const other = sides.find((s) => s.value.tag !== "text");
      if (other) {
        return { tag: "manual", val: `cannot compare ${other.value.tag} with text` };
      }
      let best = 0;
      sides.forEach((s, i) => {
        if (s.value.val.length > sides[best].value.val.length) {
          best = i;
        }
      });
      if (best === 0) return { tag: "take-left" };
      if (best === 1) return { tag: "take-right" };
      return { tag: "take-other", val: best - 2 };
    });
  },
};
