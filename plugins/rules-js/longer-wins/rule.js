// A conflict rule in JavaScript, built with componentize-js in its default settings:
//   componentize-js --wit wit --world-name resolver-plugin -o longer-wins.wasm rule.js
// Of two texts the longer wins (a tie goes left); anything else is left to a person. A field
// named "boom" makes it throw, to show that a rule that throws decides nothing: its conflicts
// wait for a person, with the thrown message.
export const resolver = {
  resolve(conflicts) {
    return conflicts.map((c) => {
      if (c.field === "boom") {
        throw new Error(`no rule for ${c.field} (thrown on purpose)`);
      }
      const left = c.left.value;
      const right = c.right.value;
      if (left.tag === "text" && right.tag === "text") {
        return left.val.length >= right.val.length ? { tag: "take-left" } : { tag: "take-right" };
      }
      return { tag: "manual", val: `cannot compare ${left.tag} with ${right.tag}` };
    });
  },
};
