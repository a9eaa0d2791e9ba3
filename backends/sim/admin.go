package sim

import (
	"encoding/json"
	"flag"
	"io"
	"net/http"
	"strings"
)

// serveFaults reads and changes the faults at runtime, with the names of
// cascade sim's flags:
//
//	GET    /sim/faults                  {"error-rate":"0","error-status":"500",...}
//	POST   /sim/faults?error-rate=1&…   set these (query or form body), keep the others
//	DELETE /sim/faults                  clear every fault
//
// Each answers with the faults now in force.
func (s *Server) serveFaults(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
	case http.MethodDelete:
		s.ApplyFaults(Faults{})
	case http.MethodPost, http.MethodPut:
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		if err := r.ParseForm(); err != nil {
			writeError(w, http.StatusBadRequest, "", "could not read the faults: "+err.Error())
			return
		}
		for {
			old := s.faults.Load()
			f := *old
			fs := faultFlagSet(&f)
			for name, vals := range r.Form {
				if fs.Lookup(name) == nil {
					writeError(w, http.StatusBadRequest, name, "unknown fault "+name+": use "+strings.Join(faultNames(fs), ", "))
					return
				}
				if err := fs.Set(name, vals[len(vals)-1]); err != nil {
					writeError(w, http.StatusBadRequest, name, "bad value for "+name+": "+err.Error())
					return
				}
			}
			f.ErrorStatus = validStatus(f.ErrorStatus)
			if s.faults.CompareAndSwap(old, &f) {
				break
			}
		}
	default:
		w.Header().Set("Allow", "GET, POST, PUT, DELETE")
		writeError(w, http.StatusMethodNotAllowed, "", "method "+r.Method+" not allowed here: use GET, POST, PUT or DELETE")
		return
	}
	f := s.Faults()
	fs := faultFlagSet(&f)
	out := map[string]string{}
	fs.VisitAll(func(fl *flag.Flag) { out[fl.Name] = fl.Value.String() })
	writeJSON(w, out)
}

// faultFlagSet binds f's fields to flags named like cascade sim's.
func faultFlagSet(f *Faults) *flag.FlagSet {
	fs := flag.NewFlagSet("faults", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	f.fields().register(fs, *f)
	return fs
}

func faultNames(fs *flag.FlagSet) []string {
	var names []string
	fs.VisitAll(func(fl *flag.Flag) { names = append(names, fl.Name) })
	return names
}

func writeJSON(w http.ResponseWriter, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "", err.Error())
		return
	}
	w.Header()["Content-Type"] = jsonContentType
	w.Write(b)
}
